//! TLS for broker connections (`tls://`, `rediss://`): a crypto provider for rustls.
//!
//! rustls picks its cryptography from its cargo features, and gives up when a build enables
//! more than one (pgevents links both `ring` and `aws-lc-rs` through different crates): the
//! NATS and Redis clients would then panic when they build a TLS configuration. Before such
//! a connection, the sinks install `aws-lc-rs` as the process-wide provider unless the
//! program installed one already, which stays in force.

/// Installs `aws-lc-rs` as rustls' process-wide crypto provider, unless one is installed.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only when another thread installed one meanwhile, which is as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}
