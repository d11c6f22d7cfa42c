//! Shutdown signals: SIGINT (Ctrl-C) and SIGTERM.

use std::future::Future;

/// Completes on the first SIGINT or SIGTERM received from now on.
///
/// The handlers are installed when this is called, not when the future is first polled: a
/// signal that comes in between (while a database starts, say) is kept for the future
/// instead of ending the process at once, before anything is cleaned up.
pub fn shutdown() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
