//! Defences against web pages the operator visits: a page on another site must not be able
//! to change anything through the operator's browser, nor read the API by pointing one of
//! its own names at this server (DNS rebinding).
//!
//! - [`check_host`]: the `Host` of every request (but the health check) must name this
//!   server: a loopback address or `localhost`, the address it listens on (any address when
//!   it listens on all of them), or a name in `[admin] allowed_hosts`. A rebound name fails
//!   this, since the browser sends the attacker's name.
//! - [`refuse_cross_site`]: a state-changing request (any method but GET, HEAD and OPTIONS)
//!   must come from this server's own origin, or from a client that sends no `Origin` (curl,
//!   scripts), and must have `Content-Type: application/json`, which a browser only sends
//!   cross-site after a CORS preflight that this server never grants.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The `Host` names that reach this server.
#[derive(Debug, Clone)]
pub(crate) struct Hosts {
    /// The address the server listens on.
    listen: IpAddr,
    /// `[admin] allowed_hosts`, lower-case, without a trailing dot.
    allowed: Vec<String>,
}

impl Hosts {
    /// The names accepted by a server listening on `listen` with `allowed` extra names. An
    /// unknown listening address accepts only loopback names.
    pub(crate) fn new(listen: Option<SocketAddr>, allowed: &[String]) -> Hosts {
        Hosts {
            listen: listen.map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip().to_canonical()),
            allowed: allowed.iter().filter_map(|name| host_name(name)).collect(),
        }
    }

    /// Whether `authority` (a `Host` value: a name or address, maybe a port) names this server.
    fn accepts(&self, authority: &str) -> bool {
        let Some(name) = host_name(authority) else {
            return false;
        };
        if name == "localhost" || self.allowed.contains(&name) {
            return true;
        }
        // An address (never a name) cannot be rebound: the page using it came from it.
        match name.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) if ip.is_loopback() => true,
            Ok(ip) => {
                !self.listen.is_loopback() && (self.listen.is_unspecified() || ip == self.listen)
            }
            Err(_) => false,
        }
    }

    /// What to do about a refused `host`.
    fn advice(&self, host: &str) -> String {
        let reach = if self.listen.is_loopback() {
            "reach it as localhost or 127.0.0.1".to_string()
        } else if self.listen.is_unspecified() {
            "reach it by one of its addresses or as localhost".to_string()
        } else {
            format!("reach it as {} or localhost", self.listen)
        };
        format!(
            "Host {host:?} does not name this admin server, so the request is refused (a web \
             page can point a name of its own at this server to read it); {reach}, or add the \
             name to [admin] allowed_hosts in the config"
        )
    }
}

/// The name or address of a `Host` value: without the port, the brackets of an IPv6
/// address or a trailing dot, in lower case. `None` when it is not a host.
fn host_name(authority: &str) -> Option<String> {
    let authority = authority.trim();
    let is_port = |p: &str| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    let name = match authority.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
                return None;
            }
            inside
        }
        None => match authority.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return None,
            None => authority,
        },
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    valid.then_some(name)
}

/// The request's `Host` (or, in an absolute-form request, its URI's authority).
fn host_of(request: &Request) -> Option<&str> {
    match request.headers().get(header::HOST) {
        Some(value) => Some(value.to_str().unwrap_or("")),
        None => request.uri().authority().map(|a| a.as_str()),
    }
}

/// Middleware: answers 421 to a request whose `Host` does not name this server.
///
/// The health check is exempt: load balancers and orchestrators probe it by whatever name or
/// address they know this server by, and its answer (up or down) holds no data worth a
/// rebinding. A request without any `Host` (HTTP/1.0) cannot come from a browser and passes.
pub(crate) async fn check_host(
    State(hosts): State<Arc<Hosts>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() != "/healthz" {
        if let Some(host) = host_of(&request) {
            if !hosts.accepts(host) {
                return ApiError::MisdirectedHost(hosts.advice(host)).into_response();
            }
        }
    }
    next.run(request).await
}

/// Middleware: answers 403 to a state-changing request a browser could send from another
/// site.
pub(crate) async fn refuse_cross_site(request: Request, next: Next) -> Response {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe {
        if let Err(why) = same_site_json(request.method(), request.headers(), host_of(&request)) {
            return ApiError::Forbidden(why).into_response();
        }
    }
    next.run(request).await
}

/// Why a state-changing request may come from another site, if it may.
fn same_site_json(method: &Method, headers: &HeaderMap, host: Option<&str>) -> Result<(), String> {
    const ONLY_OWN: &str = "state changes are accepted only from this server's console or from \
                            clients that send no Origin (curl, scripts)";
    let text = |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    if let Some(origin) = text(header::ORIGIN) {
        if !host.is_some_and(|host| same_origin(origin, host)) {
            return Err(format!(
                "cross-site request refused: Origin {origin:?} is not this server's own; {ONLY_OWN}"
            ));
        }
    } else if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        if !matches!(site, "same-origin" | "none") {
            return Err(format!(
                "cross-site request refused: the browser sent it from another site \
                 (Sec-Fetch-Site: {site}); {ONLY_OWN}"
            ));
        }
    }
    let content_type = text(header::CONTENT_TYPE);
    let media_type = content_type
        .and_then(|t| t.split(';').next())
        .map(str::trim);
    if !media_type.is_some_and(|t| t.eq_ignore_ascii_case("application/json")) {
        let given = content_type.map_or("none".to_string(), |t| format!("{t:?}"));
        return Err(format!(
            "a {method} needs Content-Type: application/json, even with an empty body (this one \
             has {given}): web pages on other sites can send any other type without asking"
        ));
    }
    Ok(())
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of a server reached as `host`.
/// Either scheme is accepted: behind a TLS proxy the browser says https.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let normal = |a: &str| {
        let a = a.trim().to_ascii_lowercase();
        match a.strip_suffix(default_port) {
            Some(bare) => bare.to_string(),
            None => a,
        }
    };
    normal(authority) == normal(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening(addr: &str, allowed: &[&str]) -> Hosts {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        Hosts::new(addr.parse().ok(), &allowed)
    }

    #[test]
    fn host_names_lose_port_brackets_and_case() {
        assert_eq!(host_name("LocalHost:8080").as_deref(), Some("localhost"));
        assert_eq!(host_name("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(host_name("[::1]").as_deref(), Some("::1"));
        assert_eq!(
            host_name("admin.example.com.").as_deref(),
            Some("admin.example.com")
        );
        for bad in [
            "",
            ":80",
            "a b",
            "[::1",
            "[::1]x",
            "host:port",
            "user@host",
            "a/b",
        ] {
            assert_eq!(host_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_loopback_listener_accepts_loopback_names_and_allowed_hosts() {
        let hosts = listening("127.0.0.1:8080", &["Admin.Example.com"]);
        for ok in [
            "localhost",
            "localhost:1",
            "127.0.0.1:8080",
            "127.9.9.9",
            "[::1]:8080",
            "[::ffff:127.0.0.1]",
            "admin.example.com:8080",
        ] {
            assert!(hosts.accepts(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "10.0.0.1:8080",
            "0.0.0.0",
            "localhost.evil.example",
            "example.com",
        ] {
            assert!(!hosts.accepts(refused), "{refused}");
        }
        assert!(hosts.advice("evil.example").contains("allowed_hosts"));
    }

    #[test]
    fn other_listeners_accept_their_address_or_any_when_unspecified() {
        let one = listening("10.0.0.5:8080", &["pgevents.internal"]);
        assert!(one.accepts("10.0.0.5:8080"));
        assert!(one.accepts("pgevents.internal"));
        assert!(one.accepts("127.0.0.1"));
        assert!(!one.accepts("10.0.0.6:8080"));
        assert!(!one.accepts("evil.example"));
        let all = listening("0.0.0.0:8080", &[]);
        assert!(all.accepts("192.168.1.20:8080"));
        assert!(all.accepts("[fe80::1]:8080"));
        assert!(!all.accepts("pgevents.internal"));
    }

    #[test]
    fn state_changes_need_the_own_origin_and_json() {
        let post = Method::POST;
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, value.parse().expect("header value"));
            }
            map
        };
        let host = Some("127.0.0.1:8080");
        let json = ("content-type", "application/json");
        for ok in [
            headers(&[json]),
            headers(&[("content-type", "Application/JSON; charset=utf-8")]),
            headers(&[json, ("origin", "http://127.0.0.1:8080")]),
            headers(&[json, ("sec-fetch-site", "same-origin")]),
        ] {
            assert!(same_site_json(&post, &ok, host).is_ok(), "{ok:?}");
        }
        for refused in [
            headers(&[]),
            headers(&[("content-type", "text/plain")]),
            headers(&[("content-type", "application/jsonx")]),
            headers(&[json, ("origin", "http://evil.example")]),
            headers(&[json, ("origin", "http://127.0.0.1:9090")]),
            headers(&[json, ("origin", "null")]),
            headers(&[json, ("sec-fetch-site", "cross-site")]),
            headers(&[json, ("sec-fetch-site", "same-site")]),
        ] {
            assert!(
                same_site_json(&post, &refused, host).is_err(),
                "{refused:?}"
            );
        }
        let origin = headers(&[json, ("origin", "http://127.0.0.1:8080")]);
        assert!(
            same_site_json(&post, &origin, None).is_err(),
            "no Host to compare"
        );
        assert!(same_origin(
            "https://admin.example.com",
            "admin.example.com:443"
        ));
        assert!(same_origin("HTTP://LOCALHOST:8080", "localhost:8080"));
        assert!(!same_origin("ftp://localhost:8080", "localhost:8080"));
    }
}
