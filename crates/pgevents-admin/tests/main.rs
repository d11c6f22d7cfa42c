//! Integration tests of the admin server: real PostgreSQL, a running dispatcher, real HTTP
//! on 127.0.0.1, and headless Chromium for the console.

mod browser;
mod cross_site;
mod support;

use std::time::Duration;

use serde_json::Value;
use support::{daemon, eventually, fast_retry, Mode, Table, WAIT};

const UNKNOWN_ID: &str = "0193f6c4-0000-7abc-8000-000000000001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_path_answers_json() {
    let d = daemon(
        vec![
            Table::new("order_events", "orders"),
            Table::new("note_events", "notes").capture(|spec| {
                spec.condition = Some("note <> 'hidden'".into());
                spec.payload_columns = Some(vec!["id".into()]);
                spec.ordering = pgevents_trigger::Ordering::Columns(vec!["note".into()]);
            }),
        ],
        None,
        true,
    )
    .await;
    d.sql("INSERT INTO orders VALUES (1, 'a'), (2, 'b'); INSERT INTO notes VALUES (1, 'n'), (2, 'hidden')")
        .await;
    let orders = d.wait_for_events("order_events", "delivered", 2).await;

    // Triggers with their counts.
    let (code, body) = d.get("/api/v1/triggers").await;
    assert_eq!(code, 200, "{body}");
    let triggers = body["triggers"].as_array().expect("triggers");
    assert_eq!(triggers.len(), 2);
    let order = triggers
        .iter()
        .find(|t| t["name"] == "order_events")
        .expect("order_events listed");
    assert_eq!(order["schema"], "public");
    assert_eq!(order["table"], "orders");
    assert_eq!(order["delivered"], 2);
    assert_eq!(order["pending"], 0);
    assert_eq!(order["failed"], 0);
    assert_eq!(order["ordering"], "row");
    assert_eq!(order["where"], Value::Null);
    assert_eq!(order["payload_columns"], Value::Null);
    let notes = triggers
        .iter()
        .find(|t| t["name"] == "note_events")
        .expect("note_events listed");
    assert_eq!(notes["ordering"], serde_json::json!({"columns": ["note"]}));
    assert_eq!(notes["where"], "note <> 'hidden'");
    assert_eq!(notes["payload_columns"], serde_json::json!(["id"]));
    assert!(body["capture_lag_seconds"].as_f64().is_some());

    // The list, filtered by trigger and status.
    assert_eq!(orders.len(), 2);
    assert!(orders.iter().all(|e| e["trigger"] == "order_events"));
    assert!(
        orders[0]["seq"].as_i64() > orders[1]["seq"].as_i64(),
        "newest first"
    );
    let (code, body) = d.get("/api/v1/events").await;
    assert_eq!(code, 200);
    assert_eq!(body["events"].as_array().map(Vec::len), Some(3));
    assert_eq!(body["next_before"], Value::Null);
    assert!(d.events("order_events", "failed").await.is_empty());

    // One event: its fields, payload (seed format) and attempts.
    let id = orders[1]["id"].as_str().expect("id");
    let (code, event) = d.get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(code, 200, "{event}");
    assert_eq!(event["event"]["id"], id);
    assert_eq!(event["event"]["action"], "INSERT");
    assert_eq!(event["event"]["status"], "delivered");
    assert_eq!(event["event"]["attempts"], 1);
    assert_eq!(event["payload"]["id"], id);
    assert_eq!(event["payload"]["table"], "orders");
    assert_eq!(event["payload"]["trigger"], "order_events");
    assert_eq!(event["payload"]["action"], "INSERT");
    assert_eq!(event["payload"]["data"]["new"]["id"], 1);
    assert_eq!(event["payload"]["data"]["old"], Value::Null);
    let attempts = event["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["delivered"], true);
    assert_eq!(attempts[0]["status"], 200);

    // The payload exactly as delivered.
    let (code, text) = d.get_text(&format!("/api/v1/events/{id}/payload")).await;
    assert_eq!(code, 200);
    let delivered = d.sinks[0]
        .payload_of(id.parse().expect("uuid"))
        .expect("the sink got it");
    assert_eq!(text.as_bytes(), delivered.as_slice());

    // Unknown and malformed ids, bad parameters, unknown paths: JSON errors.
    for path in [
        format!("/api/v1/events/{UNKNOWN_ID}"),
        format!("/api/v1/events/{UNKNOWN_ID}/payload"),
        "/api/v1/nothing".to_string(),
    ] {
        let (code, body) = d.get(&path).await;
        assert_eq!(code, 404, "{path}: {body}");
        assert!(body["error"].as_str().is_some(), "{path}: {body}");
    }
    let (code, body) = d
        .post(&format!("/api/v1/events/{UNKNOWN_ID}/redeliver"), "")
        .await;
    assert_eq!(code, 404, "{body}");
    for path in [
        "/api/v1/events/not-an-id",
        "/api/v1/events?status=done",
        "/api/v1/events?limit=0",
        "/api/v1/events?limit=many",
        "/api/v1/events?before=x",
        "/api/v1/events?since=yesterday",
    ] {
        let (code, body) = d.get(path).await;
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body["error"].as_str().is_some(), "{path}: {body}");
    }
    let (code, body) = d.post("/api/v1/triggers", "{}").await;
    assert_eq!(code, 405, "{body}");
    assert!(body["error"].as_str().is_some());

    // The console and its files.
    let response = d.http.get(d.url("/")).send().await.expect("GET /");
    assert_eq!(response.status(), 200);
    let csp = response
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = response.text().await.expect("html");
    assert!(html.contains("console.js") && html.contains("console.css"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    for path in ["/console.js", "/console.css"] {
        let (code, text) = d.get_text(path).await;
        assert_eq!(code, 200, "{path}");
        assert!(text.len() > 1000, "{path}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_everything_but_health_and_the_console() {
    let d = daemon(
        vec![Table::new("order_events", "orders")],
        Some("s3cret-token"),
        true,
    )
    .await;
    let (code, body) = d.post("/api/v1/triggers/order_events/invoke", "{}").await;
    assert_eq!(code, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    d.wait_for_status(&id, "delivered").await;

    let get_paths = [
        "/metrics".to_string(),
        "/api/v1/triggers".to_string(),
        "/api/v1/events".to_string(),
        "/api/v1/events?status=delivered&limit=5".to_string(),
        format!("/api/v1/events/{id}"),
        format!("/api/v1/events/{id}/payload"),
        "/api/v1/nothing".to_string(),
    ];
    let post_paths = [
        format!("/api/v1/events/{id}/redeliver"),
        "/api/v1/triggers/order_events/invoke".to_string(),
    ];
    for wrong in [None, Some("wrong-token"), Some("s3cret-tokeN"), Some("")] {
        for path in &get_paths {
            let mut request = d.http.get(d.url(path));
            if let Some(t) = wrong {
                request = request.bearer_auth(t);
            }
            let response = request.send().await.expect("GET");
            assert_eq!(response.status(), 401, "GET {path} with {wrong:?}");
            assert_eq!(
                response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok()),
                Some("Bearer realm=\"pgevents\"")
            );
            let (_, body) = support::answer(response).await;
            assert!(body["error"].as_str().is_some(), "GET {path}: {body}");
        }
        for path in &post_paths {
            let mut request = d.http.post(d.url(path)).body("{}");
            if let Some(t) = wrong {
                request = request.bearer_auth(t);
            }
            let response = request.send().await.expect("POST");
            assert_eq!(response.status(), 401, "POST {path} with {wrong:?}");
        }
    }
    // Basic auth with the right secret is not a bearer token.
    let response = d
        .http
        .get(d.url("/api/v1/triggers"))
        .basic_auth("admin", Some("s3cret-token"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 401);

    // With the token: everything answers.
    for path in &get_paths[..6] {
        let (code, body) = d.get(path).await;
        assert_eq!(code, 200, "GET {path}: {body}");
    }
    let (code, _) = d.get("/api/v1/nothing").await;
    assert_eq!(code, 404);
    let (code, body) = d.post(&post_paths[0], "").await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = d.post(&post_paths[1], r#"{"n":1}"#).await;
    assert_eq!(code, 201, "{body}");

    // No token needed: the health check and the console's static files.
    for path in ["/healthz", "/", "/console.js", "/console.css"] {
        let response = d.http.get(d.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), 200, "{path}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_follows_the_dispatcher() {
    let mut d = daemon(vec![Table::new("order_events", "orders")], Some("t"), false).await;
    let health = |d: &support::Daemon| {
        let request = d.http.get(d.url("/healthz"));
        async move { support::answer(request.send().await.expect("GET")).await }
    };
    let (code, body) = health(&d).await;
    assert_eq!(code, 503, "nothing captures yet: {body}");
    assert_eq!(body["capture"], false);
    assert_eq!(body["status"], "unavailable");

    d.start_dispatcher();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (code, body) = health(&d).await;
        if code == 200 {
            assert_eq!(body["status"], "ok");
            assert_eq!(body["database"], true);
            assert_eq!(body["capture"], true);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never healthy: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.health.is_healthy());

    d.stop_dispatcher().await;
    let (code, body) = health(&d).await;
    assert_eq!(code, 503, "capture stopped: {body}");
    assert_eq!(body["capture"], false);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoked_events_are_delivered() {
    let d = daemon(vec![Table::new("order_events", "orders")], None, true).await;
    let data = r#"{"order":9007199254740993,"total":12.50,"tags":["a","b"]}"#;
    let (code, body) = d.post("/api/v1/triggers/order_events/invoke", data).await;
    assert_eq!(code, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    let event = d.wait_for_status(&id, "delivered").await;
    assert_eq!(event["event"]["action"], "MANUAL");
    assert_eq!(event["event"]["trigger"], "order_events");
    let payload = d.sinks[0]
        .payload_of(id.parse().expect("uuid"))
        .expect("the sink got the manual event");
    let payload = String::from_utf8(payload).expect("utf-8");
    assert!(
        payload.contains(r#""action":"MANUAL""#) && payload.contains("9007199254740993"),
        "{payload}"
    );
    assert!(payload.contains("12.50"), "numbers stay exact: {payload}");

    let (code, body) = d.post("/api/v1/triggers/no_such/invoke", "{}").await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.contains("no_such")));
    for bad in ["", "{not json", "[1,"] {
        let (code, body) = d.post("/api/v1/triggers/order_events/invoke", bad).await;
        assert_eq!(code, 400, "{bad:?}: {body}");
        assert!(body["error"].as_str().is_some());
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_events_are_redelivered() {
    let d = daemon(vec![Table::new("order_events", "orders")], None, true).await;
    let sink = d.sinks[0].clone();
    sink.set(Mode::Fail);
    d.sql("INSERT INTO orders VALUES (7, 'will fail')").await;
    let failed = d.wait_for_events("order_events", "failed", 1).await;
    let id = failed[0]["id"].as_str().expect("id").to_owned();
    let (code, event) = d.get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(event["event"]["status"], "failed");
    assert_eq!(event["event"]["last_status"], 500);
    assert!(event["event"]["finished_at"].is_string());
    let attempts = event["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "max_retries 0: one attempt");
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[0]["error"], "HTTP 500 from the test sink");
    assert!(attempts[0]["response"]
        .as_str()
        .is_some_and(|r| r.contains("test sink refused")));
    assert!(attempts[0]["duration_ms"].is_number());
    assert_eq!(attempts[0]["delivered"], false);
    let (_, triggers) = d.get("/api/v1/triggers").await;
    assert_eq!(triggers["triggers"][0]["failed"], 1);

    sink.set(Mode::Deliver);
    let (code, body) = d.post(&format!("/api/v1/events/{id}/redeliver"), "").await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["id"], id.as_str());
    let event = d.wait_for_status(&id, "delivered").await;
    let attempts = event["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{event}");
    assert_eq!(attempts[0]["delivered"], false);
    assert_eq!(attempts[1]["delivered"], true);
    assert_eq!(
        sink.delivered_ids(),
        vec![id.parse::<uuid::Uuid>().expect("uuid")]
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_paged_newest_first_with_a_cursor() {
    let d = daemon(
        vec![
            Table::new("order_events", "orders"),
            Table::new("note_events", "notes"),
        ],
        None,
        true,
    )
    .await;
    d.sql(
        "INSERT INTO orders SELECT g, 'o' FROM generate_series(1, 7) g;
         INSERT INTO notes VALUES (1, 'n');",
    )
    .await;
    let all = d.wait_for_events("order_events", "delivered", 7).await;
    let seqs: Vec<i64> = all.iter().filter_map(|e| e["seq"].as_i64()).collect();

    let mut before: Option<i64> = None;
    let mut pages = Vec::new();
    loop {
        let path = match before {
            Some(b) => format!("/api/v1/events?trigger=order_events&limit=3&before={b}"),
            None => "/api/v1/events?trigger=order_events&limit=3".to_string(),
        };
        let (code, body) = d.get(&path).await;
        assert_eq!(code, 200, "{body}");
        let page: Vec<i64> = body["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["seq"].as_i64())
            .collect();
        pages.push(page);
        match body["next_before"].as_i64() {
            Some(next) => {
                assert_eq!(Some(&next), pages.last().and_then(|p| p.last()));
                before = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 3, 1],
        "{pages:?}"
    );
    assert_eq!(
        pages.concat(),
        seqs,
        "the pages cover every event, newest first"
    );

    // Time: `since` in the future matches nothing, in the past everything.
    let (_, body) = d
        .get("/api/v1/events?trigger=order_events&since=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(body["events"].as_array().map(Vec::len), Some(0));
    assert_eq!(body["next_before"], Value::Null);
    let (_, body) = d
        .get("/api/v1/events?since=2000-01-01T00:00:00%2B00:00&limit=1000")
        .await;
    assert_eq!(body["events"].as_array().map(Vec::len), Some(8));
    // Empty parameters mean "no filter", as the console sends them.
    let (code, body) = d
        .get("/api/v1/events?trigger=&status=&limit=&before=&since=")
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(8));
    d.stop().await;
}

/// The value of one series in Prometheus text (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_events_flow() {
    let d = daemon(
        vec![Table::new("metered_events", "metered").retry(fast_retry(1))],
        Some("m"),
        true,
    )
    .await;
    let sink = d.sinks[0].clone();
    let scrape = || async {
        let (code, text) = d.get_text("/metrics").await;
        assert_eq!(code, 200);
        text
    };
    let l = r#"{trigger="metered_events"}"#;
    let delivered = format!("pgevents_events_delivered_total{l}");
    let failed = format!("pgevents_events_failed_total{l}");
    let retried = format!("pgevents_events_retried_total{l}");
    let pending = format!("pgevents_events_pending{l}");
    let duration_count = format!("pgevents_delivery_duration_seconds_count{l}");
    let latency_count = format!("pgevents_delivery_latency_seconds_count{l}");
    let latency_inf =
        r#"pgevents_delivery_latency_seconds_bucket{trigger="metered_events",le="+Inf"}"#;
    let before = scrape().await;
    assert!(before.contains("pgevents_capture_lag_seconds"), "{before}");
    assert_eq!(sample(&before, &pending), 0.0);
    let captured0 = sample(&before, "pgevents_events_captured_total");

    // Held in flight: pending while the sink holds them.
    sink.set(Mode::Hold);
    d.sql("INSERT INTO metered SELECT g, 'x' FROM generate_series(1, 3) g")
        .await;
    eventually(WAIT, "3 pending in the gauge", || async {
        sample(&scrape().await, &pending) == 3.0
    })
    .await;
    let text = scrape().await;
    assert!(sample(&text, "pgevents_events_captured_total") >= captured0 + 3.0);
    assert_eq!(sample(&text, &delivered), 0.0);

    // Released: delivered, timed, no longer pending.
    sink.release();
    eventually(WAIT, "3 delivered in the counters", || async {
        let t = scrape().await;
        sample(&t, &delivered) == 3.0 && sample(&t, &pending) == 0.0
    })
    .await;
    let text = scrape().await;
    assert_eq!(sample(&text, &duration_count), 3.0, "{text}");
    assert_eq!(sample(&text, &latency_count), 3.0);
    assert_eq!(
        sample(&text, latency_inf),
        3.0,
        "a histogram, not a summary"
    );

    // Failing: one retry each, then failed.
    sink.set(Mode::Fail);
    d.sql("INSERT INTO metered VALUES (10, 'y'), (11, 'z')")
        .await;
    eventually(WAIT, "2 retried and 2 failed", || async {
        let t = scrape().await;
        sample(&t, &retried) == 2.0 && sample(&t, &failed) == 2.0
    })
    .await;
    let text = scrape().await;
    assert_eq!(sample(&text, &delivered), 3.0);
    assert_eq!(sample(&text, &duration_count), 7.0, "3 + 2 x 2 attempts");
    assert!(sample(&text, "pgevents_events_captured_total") >= captured0 + 5.0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_start_over_the_api_and_show_their_progress() {
    let d = daemon(vec![Table::new("order_events", "orders")], None, true).await;
    d.sql("INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 300) g")
        .await;
    let (code, body) = d
        .post(
            "/api/v1/triggers/order_events/backfill",
            r#"{"where": "id <= 100"}"#,
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["id"].as_i64().expect("the backfill's id");
    eventually(WAIT, "the backfill done", || async {
        let (_, body) = d.get("/api/v1/backfills").await;
        body["backfills"][0]["state"] == "done"
    })
    .await;
    let (code, body) = d.get("/api/v1/backfills").await;
    assert_eq!(code, 200, "{body}");
    let backfill = &body["backfills"][0];
    assert_eq!(backfill["id"], id);
    assert_eq!(backfill["trigger"], "order_events");
    assert_eq!(backfill["where"], "id <= 100");
    assert_eq!(backfill["rows_done"], 100);
    assert!(backfill["rows_estimated"]
        .as_i64()
        .is_some_and(|n| n >= 100));
    let delivered = d.wait_for_events("order_events", "delivered", 400).await;
    let reads = delivered.iter().filter(|e| e["action"] == "READ").count();
    assert_eq!(reads, 100, "one READ event per matching row");

    for (path, body, status, needle) in [
        ("/api/v1/triggers/no_such/backfill", "", 404, "no_such"),
        (
            "/api/v1/triggers/order_events/backfill",
            r#"{"where": "nope = 1"}"#,
            400,
            "nope",
        ),
        (
            "/api/v1/triggers/order_events/backfill",
            "[1",
            400,
            "JSON object",
        ),
        (
            "/api/v1/triggers/order_events/backfill",
            r#"{"limit": 5}"#,
            400,
            "limit",
        ),
    ] {
        let (code, answer) = d.post(path, body).await;
        assert_eq!(code, status, "{path} {body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{path} {body}: {answer} names {needle:?}"
        );
    }
    let (_, body) = d.get("/api/v1/backfills").await;
    assert_eq!(
        body["backfills"].as_array().map(Vec::len),
        Some(1),
        "refused requests start nothing"
    );
    let (code, body) = d.post("/api/v1/triggers/order_events/backfill", "").await;
    assert_eq!(code, 202, "no body: every row: {body}");
    d.stop().await;
}
