//! Loopback networking: real HTTP receivers on a free port, free ports, and ports where
//! nothing listens.

use std::net::SocketAddr;

/// Binds `127.0.0.1:<free port>` and serves the router `app` makes (given that address) in a
/// task of its own; returns the address.
pub async fn serve(app: impl FnOnce(SocketAddr) -> axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let app = app(addr);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A loopback address where nothing listens (free when asked; a server may bind it later).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// A free loopback port, for a server the test starts right after.
pub fn free_port() -> u16 {
    closed_port().port()
}
