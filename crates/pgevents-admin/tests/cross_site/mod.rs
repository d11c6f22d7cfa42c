//! What a web page on another site could make the operator's browser do: state changes it
//! can send without asking (a `text/plain` or form body, a foreign `Origin`) and reads
//! through DNS rebinding (a foreign `Host`) are refused; the console's own requests and
//! plain clients (curl, scripts) keep working.

use serde_json::Value;

use crate::support::{daemon, daemon_listening, Daemon, Table};

const TOKEN: &str = "s3cret-token";
const FOREIGN: &str = "http://evil.example";

/// Every event's sequence, status, attempts and finish time: what a redelivery or an
/// invocation would change.
async fn log_state(d: &Daemon) -> Vec<(i64, String, i32, Option<String>)> {
    d.db.client
        .query(
            "SELECT seq, status::text, attempts, finished_at::text FROM pgevents.event ORDER BY seq",
            &[],
        )
        .await
        .expect("read the log")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// POSTs `{"x":1}` to `path` with `headers` and, if given, the token.
async fn post(
    d: &Daemon,
    path: &str,
    headers: &[(&str, &str)],
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = d.http.post(d.url(path)).body(r#"{"x":1}"#);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    crate::support::answer(request.send().await.expect("POST")).await
}

/// GETs `path` with `Host: host` and the daemon's token, if any.
async fn get_as(d: &Daemon, host: &str, path: &str) -> (u16, Value) {
    let mut request = d.http.get(d.url(path)).header("host", host);
    if let Some(token) = &d.token {
        request = request.bearer_auth(token);
    }
    crate::support::answer(request.send().await.expect("GET")).await
}

/// Requests a page on another site can make a browser send: without a preflight (a
/// `text/plain`, form or multipart body, or none at all), or from a foreign origin.
const CROSS_SITE: [(&str, &[(&str, &str)]); 9] = [
    ("text/plain", &[("content-type", "text/plain")]),
    (
        "text/plain from another site",
        &[
            ("content-type", "text/plain;charset=UTF-8"),
            ("origin", FOREIGN),
        ],
    ),
    (
        "a form",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", FOREIGN),
        ],
    ),
    (
        "a multipart form",
        &[("content-type", "multipart/form-data; boundary=x")],
    ),
    ("no content type", &[]),
    (
        "JSON from another site",
        &[("content-type", "application/json"), ("origin", FOREIGN)],
    ),
    (
        "JSON from an opaque origin",
        &[("content-type", "application/json"), ("origin", "null")],
    ),
    (
        "JSON from another port of this host",
        &[
            ("content-type", "application/json"),
            ("origin", "http://127.0.0.1:1"),
        ],
    ),
    (
        "JSON marked cross-site by the browser",
        &[
            ("content-type", "application/json"),
            ("sec-fetch-site", "cross-site"),
        ],
    ),
];

async fn cross_site_posts_are_refused(token: Option<&str>) {
    let d = daemon(vec![Table::new("order_events", "orders")], token, true).await;
    d.sql("INSERT INTO orders VALUES (1, 'a')").await;
    let delivered = d.wait_for_events("order_events", "delivered", 1).await;
    let id = delivered[0]["id"].as_str().expect("id").to_owned();
    let paths = [
        format!("/api/v1/events/{id}/redeliver"),
        "/api/v1/triggers/order_events/invoke".to_string(),
        "/api/v1/triggers/order_events/backfill".to_string(),
    ];
    let before = log_state(&d).await;

    for path in &paths {
        for (what, headers) in CROSS_SITE {
            let (code, body) = post(&d, path, headers, token).await;
            assert_eq!(code, 403, "{what} to {path}: {body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("Content-Type: application/json") || error.contains("cross-site"),
                "{what} to {path}: the error says why: {error}"
            );
            if token.is_some() {
                let (code, body) = post(&d, path, headers, None).await;
                assert_eq!(code, 401, "{what} to {path} without the token: {body}");
            }
        }
    }
    assert_eq!(
        log_state(&d).await,
        before,
        "a refused request changed the log"
    );

    // The console's own requests, and clients that send no Origin, work.
    let own = d.base.clone();
    let same_origin: [&[(&str, &str)]; 3] = [
        &[("content-type", "application/json"), ("origin", &own)],
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("origin", &own),
            ("sec-fetch-site", "same-origin"),
        ],
        &[("content-type", "application/json")],
    ];
    for headers in same_origin {
        let (code, body) = post(&d, &paths[1], headers, token).await;
        assert_eq!(code, 201, "invoke with {headers:?}: {body}");
        d.wait_for_status(&id, "delivered").await;
        let (code, body) = post(&d, &paths[0], headers, token).await;
        assert_eq!(code, 202, "redeliver with {headers:?}: {body}");
        d.wait_for_status(&id, "delivered").await;
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_are_refused_without_a_token() {
    cross_site_posts_are_refused(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_are_refused_with_a_token() {
    cross_site_posts_are_refused(Some(TOKEN)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_are_refused_on_a_loopback_listener() {
    let d = daemon(vec![Table::new("order_events", "orders")], None, false).await;
    let port = d.base.rsplit(':').next().expect("a port").to_owned();
    let foreign = [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("10.0.0.1:{port}"),
    ];
    for host in &foreign {
        for path in ["/api/v1/triggers", "/api/v1/events", "/metrics", "/"] {
            let (code, body) = get_as(&d, host, path).await;
            assert_eq!(code, 421, "Host {host}, GET {path}: {body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(host.as_str()) && error.contains("allowed_hosts"),
                "the error names the Host and the key to set: {error}"
            );
        }
    }
    let own = [
        format!("localhost:{port}"),
        "LOCALHOST".to_string(),
        format!("127.0.0.1:{port}"),
        "127.0.0.2".to_string(),
        format!("[::1]:{port}"),
    ];
    for host in &own {
        let (code, body) = get_as(&d, host, "/api/v1/triggers").await;
        assert_eq!(code, 200, "Host {host}: {body}");
    }
    // Load balancers probe the health check by whatever name they know.
    let (code, body) = get_as(&d, "evil.example", "/healthz").await;
    assert!(
        code == 200 || code == 503,
        "the health check answers any Host: {code} {body}"
    );
    assert!(body["status"].is_string(), "{body}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_on_every_address_accepts_its_addresses_and_allowed_hosts() {
    let d = daemon_listening(
        vec![Table::new("order_events", "orders")],
        None,
        false,
        "0.0.0.0:0",
        &["pgevents.internal"],
    )
    .await;
    let port = d.base.rsplit(':').next().expect("a port").to_owned();
    let name = format!("pgevents.internal:{port}");
    for host in [
        name.clone(),
        "PGEVENTS.INTERNAL".to_string(),
        format!("127.0.0.1:{port}"),
        format!("192.0.2.10:{port}"),
        "localhost".to_string(),
    ] {
        let (code, body) = get_as(&d, &host, "/api/v1/triggers").await;
        assert_eq!(code, 200, "Host {host}: {body}");
    }
    for host in ["evil.example", "pgevents.internal.evil.example"] {
        let (code, body) = get_as(&d, host, "/api/v1/triggers").await;
        assert_eq!(code, 421, "Host {host}: {body}");
    }
    // The console reached by the allowed name posts from that origin.
    let origin = format!("http://{name}");
    let headers = [
        ("host", name.as_str()),
        ("origin", origin.as_str()),
        ("content-type", "application/json"),
    ];
    let (code, body) = post(&d, "/api/v1/triggers/order_events/invoke", &headers, None).await;
    assert_eq!(code, 201, "{body}");
    d.stop().await;
}
