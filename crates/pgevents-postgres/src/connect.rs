//! Opening connections to PostgreSQL: the URL's settings, TLS as libpq's `sslmode` means it,
//! and time limits so that a dead server or network never hangs a caller.
//!
//! Every pgevents connection goes through [`connect`], which reads the database URL (a
//! `postgres://` URL or a `key=value` string) with [`ConnectOptions::parse`]. TLS follows
//! libpq: `sslmode` is `disable`, `allow`, `prefer` (the default), `require`, `verify-ca` or
//! `verify-full`; `sslrootcert` names a PEM file of trusted roots (or `system` for the
//! operating system's); `sslcert` and `sslkey` a client certificate. Unlike libpq, pgevents
//! gives up on a connection attempt after [`DEFAULT_CONNECT_TIMEOUT`] and detects a silent
//! peer within about a minute (TCP keepalives and `tcp_user_timeout`), unless the URL says
//! otherwise.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::Error;

/// The `application_name` of pgevents' connections, unless the URL sets one.
pub const APPLICATION_NAME: &str = "pgevents";

/// How long one connection attempt (TCP, TLS, authentication) may take, unless the URL's
/// `connect_timeout` says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive idle time, interval and probe count, unless the URL sets them: a peer that
/// went silent is noticed after about a minute instead of libpq's two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the connection is dropped, unless the
/// URL sets `tcp_user_timeout`.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// The URL parameters this module reads itself (the driver does not know them all).
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Whether and how a connection uses TLS: libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// libpq tries without TLS first; pgevents treats it as [`SslMode::Prefer`] (TLS when
    /// the server offers it), which is never less safe.
    Allow,
    /// TLS when the server supports it, else plain (the default). The certificate is checked
    /// only when trusted roots are given (`sslrootcert` or `~/.postgresql/root.crt`).
    #[default]
    Prefer,
    /// TLS or no connection. The certificate is checked against trusted roots when they are
    /// given, as with `verify-ca`; otherwise it is not checked.
    Require,
    /// TLS, and the server's certificate must be signed by a trusted root.
    VerifyCa,
    /// TLS, a certificate signed by a trusted root, and issued for the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The mode as written in a URL (`verify-full`).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(text: &str) -> Result<SslMode, Error> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Url(format!(
                    "sslmode={other:?} in the database URL is not a TLS mode; use disable, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }
}

/// Where the trusted root certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file with one or more certificates.
    File(PathBuf),
    /// The operating system's trusted roots (`sslrootcert=system`).
    System,
}

/// The TLS settings of a database URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`, or `~/.postgresql/root.crt` when that file exists (as in libpq).
    pub root_certs: Option<RootCerts>,
    /// `sslcert`: the client certificate (PEM), for certificate authentication.
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's private key (PEM).
    pub client_key: Option<PathBuf>,
}

impl TlsSettings {
    /// True when the server's certificate chain is checked against trusted roots: in
    /// `verify-ca` and `verify-full` modes, and in every TLS mode when roots are given.
    pub fn verifies_chain(&self) -> bool {
        matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull)
            || (self.mode != SslMode::Disable && self.root_certs.is_some())
    }

    /// True when the server's certificate must also name the host (`verify-full`).
    pub fn verifies_host(&self) -> bool {
        self.mode == SslMode::VerifyFull
    }
}

/// A database URL, parsed: the driver's settings (with pgevents' defaults filled in) and
/// the TLS settings. `Debug` never shows the password.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The driver's settings: hosts, ports, user, password, database, time limits.
    pub config: tokio_postgres::Config,
    /// How to use TLS.
    pub tls: TlsSettings,
    /// How long one connection attempt may take in all.
    pub connect_timeout: Duration,
}

impl ConnectOptions {
    /// Parses a `postgres://` URL or a `key=value` connection string. The error never
    /// quotes the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<ConnectOptions, Error> {
        let Split {
            rest,
            tls: params,
            keys,
        } = split_tls_params(url)?;
        let mut tls = TlsSettings::default();
        for (key, value) in &params {
            match key.as_str() {
                "sslmode" => tls.mode = SslMode::parse(value)?,
                "sslrootcert" if value == "system" => tls.root_certs = Some(RootCerts::System),
                "sslrootcert" => tls.root_certs = Some(RootCerts::File(value.into())),
                "sslcert" => tls.client_cert = Some(value.into()),
                "sslkey" => tls.client_key = Some(value.into()),
                _ => {}
            }
        }
        if tls.root_certs.is_none() {
            tls.root_certs = default_root_file().map(RootCerts::File);
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err(Error::Url(
                "the database URL sets only one of sslcert and sslkey: give both (the client certificate and its key) or neither".into(),
            ));
        }
        let mut config: tokio_postgres::Config = rest.parse().map_err(|source| Error::Connect {
            context: "parsing the database URL".into(),
            source,
        })?;
        config.ssl_mode(match tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        if config.get_application_name().is_none() {
            config.application_name(APPLICATION_NAME);
        }
        let connect_timeout = match config.get_connect_timeout() {
            Some(t) => *t,
            None => {
                config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
                DEFAULT_CONNECT_TIMEOUT
            }
        };
        if !keys.contains("keepalives_idle") {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if !keys.contains("keepalives_interval") {
            config.keepalives_interval(KEEPALIVE_INTERVAL);
        }
        if !keys.contains("keepalives_retries") {
            config.keepalives_retries(KEEPALIVE_RETRIES);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        // The driver's own limit covers each TCP connect; ours the whole attempt, per host.
        let hosts = u32::try_from(config.get_hosts().len().max(1)).unwrap_or(1);
        Ok(ConnectOptions {
            config,
            tls,
            connect_timeout: connect_timeout.saturating_mul(hosts),
        })
    }

    /// The TLS connector these settings call for, or `None` for `sslmode=disable`.
    pub fn tls_connector(&self) -> Result<Option<MakeRustlsConnect>, Error> {
        tls_connector(&self.tls)
    }
}

/// `~/.postgresql/root.crt`, libpq's default trusted roots, when it exists.
fn default_root_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = PathBuf::from(home).join(".postgresql").join("root.crt");
    path.is_file().then_some(path)
}

/// A connection string with its TLS parameters taken out.
struct Split {
    /// The string without them, for the driver.
    rest: String,
    /// The TLS parameters, decoded.
    tls: Vec<(String, String)>,
    /// Every parameter name the string sets.
    keys: HashSet<String>,
}

/// Splits the TLS parameters off a URL or `key=value` string.
fn split_tls_params(url: &str) -> Result<Split, Error> {
    let trimmed = url.trim();
    let untouched = || Split {
        rest: trimmed.to_string(),
        tls: Vec::new(),
        keys: HashSet::new(),
    };
    let mut keys = HashSet::new();
    let mut taken = Vec::new();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok(untouched());
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            keys.insert(key.clone());
            if TLS_KEYS.contains(&key.as_str()) {
                taken.push((key, percent_decode(value)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok(Split {
            rest,
            tls: taken,
            keys,
        });
    }
    let mut kept = String::new();
    let mut chars = trimmed.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            // Not ours to judge: the driver reports the malformed string.
            return Ok(untouched());
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        if let Some((_, c)) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some((_, '\'')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Ok(untouched()),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(trimmed.len(), |&(i, _)| i);
        keys.insert(key.clone());
        if TLS_KEYS.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            kept.push_str(trimmed[start..end].trim_end());
            kept.push(' ');
        }
    }
    Ok(Split {
        rest: kept.trim_end().to_string(),
        tls: taken,
        keys,
    })
}

fn percent_decode(text: &str) -> Result<String, Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::Url(
                        "the database URL has a malformed %-escape in a TLS parameter".into(),
                    )
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::Url("the database URL has a TLS parameter that is not UTF-8".into()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_setup_error(what: String) -> Error {
    Error::Tls {
        context: "setting up TLS".into(),
        detail: what,
    }
}

fn load_roots(settings: &TlsSettings) -> Result<Option<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    match &settings.root_certs {
        None => return Ok(None),
        Some(RootCerts::File(path)) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    tls_setup_error(format!(
                        "cannot read the trusted root certificates in sslrootcert={} ({e}); give a readable PEM file",
                        path.display()
                    ))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(tls_setup_error(format!(
                    "sslrootcert={} holds no usable certificate; give the PEM file of the CA that signed the server's certificate",
                    path.display()
                )));
            }
        }
        Some(RootCerts::System) => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(tls_setup_error(
                    "sslrootcert=system, but the operating system has no trusted root certificates; install them (ca-certificates) or give sslrootcert=/path/to/ca.crt".into(),
                ));
            }
        }
    }
    Ok(Some(roots))
}

/// The TLS connector `settings` call for, or `None` for `sslmode=disable`.
pub fn tls_connector(settings: &TlsSettings) -> Result<Option<MakeRustlsConnect>, Error> {
    if settings.mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = provider();
    let roots = load_roots(settings)?;
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None if settings.verifies_chain() => {
            return Err(tls_setup_error(format!(
                "sslmode={} needs trusted root certificates: add sslrootcert=/path/to/ca.crt to the database URL (or sslrootcert=system for the operating system's roots)",
                settings.mode.as_str()
            )))
        }
        None => Arc::new(Relaxed {
            chain: None,
            provider: provider.clone(),
        }),
        Some(roots) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| tls_setup_error(format!("cannot use the trusted root certificates: {e}")))?;
            if settings.verifies_host() {
                webpki
            } else {
                Arc::new(Relaxed {
                    chain: Some(webpki),
                    provider: provider.clone(),
                })
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_setup_error(format!("no usable TLS version: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    tls_setup_error(format!(
                        "cannot read the client certificate sslcert={} ({e}); give a readable PEM file",
                        cert.display()
                    ))
                })?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                tls_setup_error(format!(
                    "cannot read the client key sslkey={} ({e}); give a readable, unencrypted PEM key",
                    key.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                tls_setup_error(format!("the client certificate and key do not fit: {e}"))
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// A verifier that checks less than the web PKI, as libpq's weaker `sslmode`s do, but always
/// checks that the server holds its certificate's key (the handshake signatures).
///
/// Without `chain` it accepts any certificate (`sslmode=prefer`/`require` without trusted
/// roots). With `chain` it checks the chain against trusted roots but not the host name
/// (`verify-ca`): the web PKI check runs whole, and only its verdict "not valid for this
/// name" — given after the chain was found good — is overruled.
#[derive(Debug)]
struct Relaxed {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects to `url` and drives the connection on a background task.
///
/// TLS follows the URL's `sslmode` (see the module docs). The whole attempt is bounded by
/// the URL's `connect_timeout` (default [`DEFAULT_CONNECT_TIMEOUT`]). Server notices are
/// logged; notifications (LISTEN) are sent to `notifications` when given. The returned
/// client reports `is_closed()` once the connection is gone.
pub async fn connect(
    url: &str,
    notifications: Option<tokio::sync::mpsc::Sender<tokio_postgres::Notification>>,
) -> Result<Client, Error> {
    let options = ConnectOptions::parse(url)?;
    let attempt = async {
        match options.tls_connector()? {
            None => establish(&options, NoTls, notifications).await,
            Some(tls) => establish(&options, tls, notifications).await,
        }
    };
    tokio::time::timeout(options.connect_timeout, attempt)
        .await
        .map_err(|_| Error::ConnectTimeout {
            after: options.connect_timeout,
        })?
}

async fn establish<T>(
    options: &ConnectOptions,
    tls: T,
    notifications: Option<tokio::sync::mpsc::Sender<tokio_postgres::Notification>>,
) -> Result<Client, Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, connection) = options
        .config
        .connect(tls)
        .await
        .map_err(|source| connect_error(&options.tls, source))?;
    tokio::spawn(drive(connection, notifications));
    Ok(client)
}

/// Sorts a failed connection attempt: a TLS failure (a certificate not trusted, a server
/// without TLS under `sslmode=require`) is a setup problem, anything else a connection one.
fn connect_error(tls: &TlsSettings, source: tokio_postgres::Error) -> Error {
    let text = source.to_string();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&source);
    let mut is_tls = text.contains("TLS") || text.contains("SSL");
    while let Some(e) = cause {
        if e.downcast_ref::<rustls::Error>().is_some() {
            is_tls = true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                is_tls = true;
            }
        }
        cause = e.source();
    }
    if !is_tls || source.as_db_error().is_some() {
        return Error::Connect {
            context: "connecting".into(),
            source,
        };
    }
    let detail = crate::error::with_causes(text, &source);
    let fix = if tls.verifies_host() {
        "check that sslrootcert names the CA that signed the server's certificate and that the URL's host is a name the certificate was issued for"
    } else if tls.verifies_chain() {
        "check that sslrootcert names the CA that signed the server's certificate"
    } else {
        "check that the server has ssl = on, or use sslmode=prefer"
    };
    Error::Tls {
        context: format!("connecting with sslmode={}", tls.mode.as_str()),
        detail: format!("{detail}; {fix}"),
    }
}

async fn drive<T>(
    mut connection: Connection<Socket, T>,
    notifications: Option<tokio::sync::mpsc::Sender<tokio_postgres::Notification>>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(tx) = &notifications {
                    // A full channel already holds a wake-up; dropping this one is fine.
                    let _ = tx.try_send(n);
                }
            }
            Some(Ok(AsyncMessage::Notice(notice))) => {
                tracing::debug!(message = notice.message(), "server notice");
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracing::debug!(%error, "database connection ended");
                break;
            }
            None => break,
        }
    }
}

/// Asks the server to cancel the query running on the connection of `token`, over TLS when
/// the URL asks for it (best effort: errors are only logged).
pub async fn cancel_query(token: &tokio_postgres::CancelToken, url: &str) {
    let result = async {
        let options = ConnectOptions::parse(url)?;
        let sent = match options.tls_connector()? {
            None => token.cancel_query(NoTls).await,
            Some(tls) => token.cancel_query(tls).await,
        };
        sent.map_err(|e| Error::query("cancelling a query", e))
    }
    .await;
    if let Err(error) = result {
        tracing::debug!(%error, "could not cancel a query");
    }
}

/// Prepares `sql` on `client`; a failure's error names `context` (what was being prepared).
pub async fn prepare(
    client: &Client,
    sql: &str,
    context: &str,
) -> Result<tokio_postgres::Statement, Error> {
    client
        .prepare(sql)
        .await
        .map_err(|e| Error::query(context, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_read_from_urls() {
        let o = ConnectOptions::parse(
            "postgres://u:p%3Fw@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .expect("parses");
        assert_eq!(o.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            o.tls.root_certs,
            Some(RootCerts::File("/tmp/ca.pem".into()))
        );
        assert_eq!(o.config.get_application_name(), Some("x"));
        assert_eq!(o.config.get_password(), Some(&b"p?w"[..]));
        assert_eq!(
            o.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let o = ConnectOptions::parse("postgres://u@h/db").expect("parses");
        assert_eq!(o.tls.mode, SslMode::Prefer);
        assert_eq!(o.config.get_application_name(), Some(APPLICATION_NAME));
        assert_eq!(o.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        let o = ConnectOptions::parse("postgres://u@h/db?connect_timeout=3&sslmode=disable")
            .expect("parses");
        assert_eq!(o.connect_timeout, Duration::from_secs(3));
        assert_eq!(o.tls.mode, SslMode::Disable);
    }

    #[test]
    fn tls_parameters_are_read_from_key_value_strings() {
        let o = ConnectOptions::parse(
            "host=h user=u sslmode = verify-ca sslrootcert='/my dir/ca.pem' password='it\\'s'",
        )
        .expect("parses");
        assert_eq!(o.tls.mode, SslMode::VerifyCa);
        assert_eq!(
            o.tls.root_certs,
            Some(RootCerts::File("/my dir/ca.pem".into()))
        );
        assert_eq!(o.config.get_password(), Some(&b"it's"[..]));
        assert_eq!(o.config.get_user(), Some("u"));
    }

    #[test]
    fn bad_tls_settings_are_explained() {
        let e = ConnectOptions::parse("postgres://u@h/db?sslmode=verify").expect_err("bad mode");
        assert!(e.to_string().contains("verify-full"), "{e}");
        let e = ConnectOptions::parse("postgres://u@h/db?sslcert=/a.pem").expect_err("no key");
        assert!(e.to_string().contains("sslkey"), "{e}");
        let settings = TlsSettings {
            mode: SslMode::VerifyFull,
            root_certs: None,
            client_cert: None,
            client_key: None,
        };
        let e = tls_connector(&settings).err().expect("needs roots");
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        let settings = TlsSettings {
            mode: SslMode::VerifyCa,
            root_certs: Some(RootCerts::File("/nonexistent/ca.pem".into())),
            client_cert: None,
            client_key: None,
        };
        let e = tls_connector(&settings).err().expect("unreadable roots");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn passwords_never_appear_in_errors() {
        let e = ConnectOptions::parse("postgres://u:hunter2@h:notaport/db").expect_err("bad port");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let o = ConnectOptions::parse("postgres://u:hunter2@h/db").expect("parses");
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
