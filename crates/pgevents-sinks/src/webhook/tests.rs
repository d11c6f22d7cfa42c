//! Webhook tests: signing, `Retry-After`, settings, and deliveries to a real HTTP server on
//! 127.0.0.1.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use pgevents_delivery::{Delivery, Outcome, Report, Sink};
use pgevents_event::{Attempt, Event, Format};
use pgevents_testkit::events::order_update;
use sha2::Sha256;
use tokio::sync::mpsc;

use super::sink::{is_retriable_status, parse_retry_after, SigningKey, MAX_CONNECTIONS};
use super::{WebhookConfig, WebhookSink};
use crate::{Env, ResolveSink, SinkConfigErrorKind};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(10);

// ---- signing and Retry-After -----------------------------------------------------------

#[test]
fn signature_matches_the_standard_webhooks_example() {
    let key = SigningKey::from_secret(SECRET).expect("valid whsec_ secret");
    assert_eq!(
        key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

#[test]
fn secrets_without_the_prefix_are_raw_bytes_and_bad_base64_is_refused() {
    let raw = SigningKey::from_secret("plain secret").expect("any bytes are a key");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"plain secret").expect("hmac key");
    mac.update(b"id.1.{}");
    assert_eq!(
        raw.sign("id", 1, b"{}"),
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    );
    assert!(SigningKey::from_secret("whsec_not base64!").is_none());
    assert!(SigningKey::from_secret("whsec_").is_none());
}

#[test]
fn retry_after_accepts_seconds_and_http_dates() {
    let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
    assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
    assert_eq!(
        parse_retry_after(" 120 ", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
        Some(Duration::ZERO),
        "a date in the past means no wait"
    );
    for bad in ["", "-1", "1.5", "soon", "99999999999999999999999"] {
        assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
    }
}

#[test]
fn retriable_statuses() {
    for code in [408, 429, 500, 502, 503, 504, 599] {
        assert!(is_retriable_status(status(code)), "{code}");
    }
    for code in [200, 301, 400, 401, 403, 404, 409, 410, 422] {
        assert!(!is_retriable_status(status(code)), "{code}");
    }
}

fn status(code: u16) -> reqwest::StatusCode {
    reqwest::StatusCode::from_u16(code).expect("valid status")
}

// ---- settings --------------------------------------------------------------------------

fn config(text: &str) -> WebhookConfig {
    toml::from_str(text).expect("webhook settings parse")
}

fn problems(text: &str, env: &Env) -> Vec<String> {
    config(text)
        .validate("trigger[2].webhook", env)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn missing_variables_are_named_with_their_join_path() {
    let text = r#"
        url_from_env = "ORDERS_HOOK"
        headers = { "X-Api-Key" = { from_env = "HOOK_KEY" } }
        signing_secret_from_env = "HOOK_SECRET"
    "#;
    assert_eq!(
        problems(text, &Env::fixed::<_, &str, &str>([])),
        [
            "trigger[2].webhook.url_from_env: environment variable ORDERS_HOOK is not set; export it or use url = \"...\"",
            "trigger[2].webhook.headers[\"X-Api-Key\"].from_env: environment variable HOOK_KEY is not set; export it or give the value inline: \"X-Api-Key\" = \"...\"",
            "trigger[2].webhook.signing_secret_from_env: environment variable HOOK_SECRET is not set; export it or remove signing_secret_from_env to send unsigned requests",
        ]
    );
}

#[test]
fn every_kind_of_bad_setting_is_reported() {
    let env = Env::fixed([("BAD_SECRET", "whsec_%%%"), ("HOOK", "ftp://example.com")]);
    let cases: [(&str, &str); 8] = [
        (r#"url = "https://a.example" 
            url_from_env = "HOOK""#, "url_from_env: url and url_from_env are both set"),
        ("", "url: missing; set url = \"https://...\" or url_from_env = \"VAR\""),
        (r#"url = "example.com/hook""#, "url: not a valid URL (relative URL without a base)"),
        (r#"url_from_env = "HOOK""#, "url_from_env: URL scheme \"ftp\" is not supported; use http:// or https://"),
        (r#"url = "https://a.example"
            headers = { "Bad Name" = "x" }"#, "headers[\"Bad Name\"]: \"Bad Name\" is not a valid HTTP header name"),
        (r#"url = "https://a.example"
            headers = { "X-Ok" = "line\nbreak" }"#, "headers[\"X-Ok\"]: the header value is not valid in HTTP"),
        (r#"url = "https://a.example"
            headers = { "Content-Type" = "text/plain" }"#, "headers[\"Content-Type\"]: header Content-Type is set by pgevents itself"),
        (r#"url = "https://a.example"
            signing_secret_from_env = "BAD_SECRET""#, "signing_secret_from_env: the signing secret starts with whsec_ but the rest is not valid base64"),
    ];
    for (text, expected) in cases {
        let found = problems(text, &env);
        assert_eq!(found.len(), 1, "{text}: {found:?}");
        assert!(
            found[0].starts_with(&format!("trigger[2].webhook.{expected}")),
            "{text}: {found:?}"
        );
        assert!(!found[0].contains("line\nbreak") && !found[0].contains("%%%"));
    }
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let error = toml::from_str::<WebhookConfig>(
        r#"url = "https://a.example"
        secret = "x""#,
    )
    .expect_err("unknown key");
    assert!(
        error.message().contains("unknown field `secret`"),
        "{error}"
    );
    let error = toml::from_str::<WebhookConfig>(
        r#"headers = { "X-Api-Key" = { from_env = "K", default = "x" } }"#,
    )
    .expect_err("unknown key in a header value");
    assert!(
        error.message().contains("unknown field `default`"),
        "{error}"
    );
}

#[test]
fn debug_never_shows_secrets() {
    let text = r#"
        url = "https://user:pa55@example.com/hook?token=t0ken"
        headers = { "X-Api-Key" = "k3y", "X-Other" = { from_env = "OTHER" } }
        signing_secret_from_env = "HOOK_SECRET"
    "#;
    let env = Env::fixed([("OTHER", "0ther"), ("HOOK_SECRET", SECRET)]);
    let config = config(text);
    let sink = config
        .resolve("webhook", Format::Seed, &env)
        .expect("valid settings");
    for shown in [format!("{config:?}"), format!("{sink:?}"), sink.endpoint()] {
        for secret in ["pa55", "t0ken", "k3y", "0ther", "MfKQ9r8"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
    assert_eq!(sink.endpoint(), "https://user:***@example.com/hook?***");
}

// ---- deliveries to a real server -------------------------------------------------------

/// What the test server answers.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    delay: Duration,
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: "",
            delay: Duration::ZERO,
        }
    }
}

/// A request the test server received.
struct Received {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// An HTTP server on 127.0.0.1 answering `POST /hook` with `reply`; returns its URL and the
/// requests it receives.
async fn serve(reply: Reply) -> (String, mpsc::Receiver<Received>) {
    let (tx, rx) = mpsc::channel(16);
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State((tx, reply)): State<(mpsc::Sender<Received>, Reply)>,
                 headers: HeaderMap,
                 body: axum::body::Bytes| async move {
                    let _ = tx
                        .send(Received {
                            headers,
                            body: body.to_vec(),
                        })
                        .await;
                    tokio::time::sleep(reply.delay).await;
                    let mut answer = HeaderMap::new();
                    for (name, value) in reply.headers {
                        answer.insert(
                            HeaderName::from_static(name),
                            value.parse().expect("header value"),
                        );
                    }
                    (
                        StatusCode::from_u16(reply.status).expect("status"),
                        answer,
                        reply.body,
                    )
                },
            ),
        )
        .with_state((tx, reply));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

fn event() -> Event {
    order_update(
        42,
        r#"{"id":7,"status":"new"}"#.into(),
        r#"{"id":7,"status":"paid","total":12345678901234567890.50}"#.into(),
        None,
    )
}

fn delivery(event: &Event, timeout: Duration) -> Delivery {
    Delivery {
        event: event.clone(),
        attempt: Attempt {
            current_retry: 1,
            max_retries: 5,
        },
        timeout,
    }
}

fn sink(url: &str, format: Format) -> WebhookSink {
    config(&format!("url = {url:?}"))
        .resolve("webhook", format, &Env::default())
        .expect("valid settings")
}

async fn next(rx: &mut mpsc::Receiver<Received>) -> Received {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the server got a request in time")
        .expect("the server is running")
}

#[tokio::test]
async fn delivers_the_payload_with_headers_and_a_valid_signature() {
    let (url, mut rx) = serve(Reply {
        body: "thanks",
        ..Reply::status(200)
    })
    .await;
    let config = config(
        r#"url_from_env = "ORDERS_HOOK"
           headers = { "X-Api-Key" = { from_env = "HOOK_KEY" }, "X-Team" = "billing" }
           signing_secret_from_env = "HOOK_SECRET""#,
    );
    let env = Env::fixed([
        ("ORDERS_HOOK", url.as_str()),
        ("HOOK_KEY", "k3y"),
        ("HOOK_SECRET", SECRET),
    ]);
    let sink = config
        .resolve("trigger[0].webhook", Format::Hasura, &env)
        .expect("valid settings");
    let event = event();
    let delivery = delivery(&event, Duration::from_secs(10));
    let expected_body = Format::Hasura.encode(&event, &delivery.attempt);

    let outcome = sink.deliver(delivery).await;
    assert_eq!(
        outcome,
        Outcome::Delivered(Report {
            status: Some(200),
            error: None,
            response: Some("thanks".into()),
        })
    );

    let got = next(&mut rx).await;
    assert_eq!(got.body, expected_body);
    let header = |name: &str| {
        got.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("x-api-key"), "k3y");
    assert_eq!(header("x-team"), "billing");
    assert_eq!(header("webhook-id"), event.id().to_string());
    let timestamp: u64 = header("webhook-timestamp").parse().expect("unix seconds");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    assert!(now.abs_diff(timestamp) < 60, "{timestamp} vs {now}");

    // Verify as a receiver would, independently of the sink's signing code.
    let key = BASE64
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("base64 key");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("hmac key");
    mac.update(format!("{}.{}.", header("webhook-id"), timestamp).as_bytes());
    mac.update(&got.body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    assert_eq!(header("webhook-signature"), expected);
}

#[tokio::test]
async fn unsigned_seed_delivery_has_no_signature_headers() {
    let (url, mut rx) = serve(Reply::status(204)).await;
    let event = event();
    let outcome = sink(&url, Format::Seed)
        .deliver(delivery(&event, Duration::from_secs(10)))
        .await;
    assert!(matches!(outcome, Outcome::Delivered(_)), "{outcome:?}");
    let got = next(&mut rx).await;
    assert_eq!(got.body, event.payload());
    assert!(got.headers.get("webhook-signature").is_none());
}

#[tokio::test]
async fn server_errors_are_retried_with_an_excerpt() {
    let (url, _rx) = serve(Reply {
        body: "database is down",
        ..Reply::status(500)
    })
    .await;
    let outcome = sink(&url, Format::Seed)
        .deliver(delivery(&event(), Duration::from_secs(10)))
        .await;
    assert_eq!(
        outcome,
        Outcome::Retry {
            report: Report {
                status: Some(500),
                error: Some("HTTP 500 Internal Server Error".into()),
                response: Some("database is down".into()),
            },
            after: None,
        }
    );
}

#[tokio::test]
async fn client_errors_and_redirects_are_rejected() {
    for (code, location) in [(400, None), (404, None), (302, Some("http://127.0.0.1:1/"))] {
        let (url, _rx) = serve(Reply {
            headers: location.map(|l| vec![("location", l)]).unwrap_or_default(),
            body: "no",
            ..Reply::status(code)
        })
        .await;
        let outcome = sink(&url, Format::Seed)
            .deliver(delivery(&event(), Duration::from_secs(10)))
            .await;
        match outcome {
            Outcome::Reject(report) => {
                assert_eq!(report.status, Some(code));
                assert_eq!(report.response.as_deref(), Some("no"));
            }
            other => panic!("{code}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn too_many_requests_honours_retry_after() {
    let (url, _rx) = serve(Reply {
        headers: vec![("retry-after", "2")],
        ..Reply::status(429)
    })
    .await;
    let outcome = sink(&url, Format::Seed)
        .deliver(delivery(&event(), Duration::from_secs(10)))
        .await;
    match outcome {
        Outcome::Retry { report, after } => {
            assert_eq!(after, Some(Duration::from_secs(2)));
            assert_eq!(report.status, Some(429));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_slow_server_times_out_and_is_retried() {
    let (url, mut rx) = serve(Reply {
        delay: Duration::from_secs(30),
        ..Reply::status(200)
    })
    .await;
    let started = std::time::Instant::now();
    let outcome = sink(&url, Format::Seed)
        .deliver(delivery(&event(), Duration::from_millis(300)))
        .await;
    assert!(started.elapsed() < WAIT, "the timeout was not respected");
    next(&mut rx).await; // the request did reach the server
    match outcome {
        Outcome::Retry {
            report,
            after: None,
        } => {
            assert_eq!(report.status, None);
            let error = report.error.unwrap_or_default();
            assert!(error.starts_with("timed out after 300ms"), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_closed_port_is_retried() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    let outcome = sink(&format!("http://{addr}/hook?token=t0ken"), Format::Seed)
        .deliver(delivery(&event(), Duration::from_secs(10)))
        .await;
    match outcome {
        Outcome::Retry {
            report,
            after: None,
        } => {
            let error = report.error.unwrap_or_default();
            assert!(error.starts_with("could not connect"), "{error}");
            assert!(!error.contains("t0ken"), "the URL leaked: {error}");
        }
        other => panic!("{other:?}"),
    }
}

// ---- a burst through the dispatcher ----------------------------------------------------

/// Rows written at once in the burst test: three times the webhook's connection limit.
const BURST: i64 = 400;

/// A burst of events beyond the webhook's connection limit, to a receiver that takes a second
/// per request, with a 3 s timeout: events wait for a connection before their attempt starts,
/// so every one is delivered on its first attempt (none times out before it was even sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_connection_limit_is_delivered_at_the_first_attempt() {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (url, mut requests) = serve(Reply {
        delay: Duration::from_secs(1),
        ..Reply::status(200)
    })
    .await;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&received);
    tokio::spawn(async move {
        while requests.recv().await.is_some() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });

    let db = pgevents_tempdb::testing::fresh_database("pgevents_webhook").expect("test database");
    let (client, connection) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("create the table");
    let policy = pgevents::RetryPolicy {
        max_retries: 0,
        timeout: Duration::from_secs(3),
        ..pgevents::RetryPolicy::default()
    };
    let listener = pgevents::Listener::builder(&db)
        .retry(policy)
        .sink(pgevents::Trigger::for_table("t", sink(&url, Format::Seed)).expect("a table name"))
        .build()
        .await
        .expect("build the listener");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(listener.run(async move {
        let _ = stopped.await;
    }));

    client
        .execute(
            "INSERT INTO t SELECT g FROM generate_series(1, $1::bigint) g",
            &[&BURST],
        )
        .await
        .expect("write the burst");
    let (delivered, failed, retried) = loop {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'd'), count(*) FILTER (WHERE status = 'f'), \
                        count(*) FILTER (WHERE attempts <> 1) FROM pgevents.event",
                &[],
            )
            .await
            .expect("count the events");
        let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if counts.0 + counts.1 == BURST {
            break counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {counts:?} of {BURST} events (delivered, failed, retried) settled in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stop.send(());
    running
        .await
        .expect("the listener task")
        .expect("the listener stops cleanly");
    let errors = client
        .query(
            "SELECT DISTINCT last_error FROM pgevents.event WHERE status = 'f'",
            &[],
        )
        .await
        .expect("read the errors");
    let errors: Vec<Option<String>> = errors.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        (delivered, failed, retried),
        (BURST, 0, 0),
        "(delivered, failed, not at the first attempt); errors: {errors:?}"
    );
    assert_eq!(
        received.load(std::sync::atomic::Ordering::SeqCst),
        BURST as usize,
        "the receiver got each event once"
    );
}

/// The slots of [`Sink::ready`] bound the requests in flight: with all of them taken, the
/// next waits until one is given back.
#[tokio::test(start_paused = true)]
async fn ready_waits_while_every_connection_is_taken() {
    let sink = sink("http://127.0.0.1:9/hook", Format::Seed);
    let mut taken = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        taken.push(sink.ready().await);
    }
    let next = sink.ready();
    tokio::pin!(next);
    assert!(
        tokio::time::timeout(Duration::from_secs(60), &mut next)
            .await
            .is_err(),
        "a request beyond the limit got a slot"
    );
    drop(taken.pop());
    let _slot = tokio::time::timeout(WAIT, next)
        .await
        .expect("a slot given back is taken by the next request");
}

#[test]
fn resolve_fails_with_the_first_problem() {
    let config = config(r#"url = "mailto:x@example.com""#);
    let error = config
        .resolve("w", Format::Seed, &Env::default())
        .expect_err("bad scheme");
    assert_eq!(error.path, "w.url");
    assert!(matches!(
        error.kind,
        SinkConfigErrorKind::UnsupportedScheme { .. }
    ));
}
