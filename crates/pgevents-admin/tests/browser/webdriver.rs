//! A browser for console tests: headless Chromium (Debian's `chromium`) driven through
//! `chromedriver` (Debian's `chromium-driver`) over the W3C WebDriver protocol. A missing
//! program fails the test with the line that installs it (`./test.sh` installs both).
//! Shared by the console tests of `pgevents-admin` and of the `pgevents` binary.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

const STEP: Duration = Duration::from_secs(30);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const INSTALL: &str =
    "install Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver (./test.sh installs them)";

fn find_program(candidates: &[&str], env: &str) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Some(PathBuf::from(path));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Where test artifacts go: the cargo target directory.
fn artifact(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let _ = std::fs::create_dir_all(&dir);
    dir.join(name)
}

/// A chromedriver process and one browser session on it.
pub(crate) struct Browser {
    http: reqwest::Client,
    session: String,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub(crate) async fn start() -> Browser {
        let chromium = find_program(
            &[
                "/usr/lib/chromium/chromium",
                "/usr/bin/chromium",
                "/usr/bin/chromium-browser",
            ],
            "PGEVENTS_CHROMIUM",
        )
        .unwrap_or_else(|| panic!("headless Chromium is needed for the console test: {INSTALL}"));
        let driver_path = find_program(
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
            "PGEVENTS_CHROMEDRIVER",
        )
        .unwrap_or_else(|| panic!("chromedriver is needed for the console test: {INSTALL}"));
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("address").port()
        };
        let driver = tokio::process::Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL}", driver_path.display()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .expect("http client");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + STEP;
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["value"]["ready"].as_bool()),
                Err(_) => None,
            };
            if ready == Some(true) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start on port {port}: {INSTALL}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("a profile directory");
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-extensions".into(),
            "--window-size=1440,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args},
        }}});
        let response = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("POST /session");
        let body: Value = response.json().await.expect("session answer");
        let session = body["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "Chromium did not start ({}): {body}; {INSTALL}",
                    chromium.display()
                )
            })
            .to_owned();
        Browser {
            http,
            session: format!("{base}/session/{session}"),
            _driver: driver,
            _profile: profile,
        }
    }

    /// One WebDriver command; its `value`, or the WebDriver error as text.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if method == reqwest::Method::POST {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let ok = response.status().is_success();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(body["value"].clone())
        } else {
            Err(format!("{method} {path}: {}", body["value"]))
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.command(reqwest::Method::POST, path, body).await
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.command(reqwest::Method::GET, path, Value::Null).await
    }

    pub(crate) async fn open(&self, url: &str) -> Result<(), String> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    async fn find(&self, css: &str) -> Result<String, String> {
        let found = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await?;
        found[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no element id for {css}: {found}"))
    }

    /// Retries `action` on the element `css` matches until it succeeds: the console
    /// re-renders on every refresh, so a found element may be gone (stale) a moment later.
    async fn on_element<T, F, Fut>(&self, css: &str, what: &str, action: F) -> Result<T, String>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, String>>,
    {
        let deadline = Instant::now() + STEP;
        let mut last = String::from("never found");
        while Instant::now() < deadline {
            match self.find(css).await {
                Ok(id) => match action(id).await {
                    Ok(Some(done)) => return Ok(done),
                    Ok(None) => last = "not yet".into(),
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("timed out waiting for {css} to {what}: {last}"))
    }

    /// Waits until `css` matches a displayed element; returns it.
    pub(crate) async fn wait_for(&self, css: &str) -> Result<String, String> {
        self.on_element(css, "be displayed", |id| async move {
            let shown = self.get(&format!("/element/{id}/displayed")).await?;
            Ok((shown == Value::Bool(true)).then_some(id))
        })
        .await
    }

    /// Waits until the text of `css` is `text`.
    pub(crate) async fn wait_for_text(&self, css: &str, text: &str) -> Result<(), String> {
        self.on_element(css, &format!("read {text:?}"), |id| async move {
            let seen = self.get(&format!("/element/{id}/text")).await?;
            Ok((seen == text).then_some(()))
        })
        .await
    }

    pub(crate) async fn click(&self, css: &str) -> Result<(), String> {
        self.on_element(css, "be clicked", |id| async move {
            self.post(&format!("/element/{id}/click"), json!({}))
                .await?;
            Ok(Some(()))
        })
        .await
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        let id = self.wait_for(css).await?;
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await
            .map(drop)
    }

    pub(crate) async fn screenshot(&self, name: &str) -> Result<PathBuf, String> {
        let png = self.get("/screenshot").await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .map_err(|e| e.to_string())?;
        let path = artifact(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
    }

    /// Ends the session after a console test's browser `steps`: prints where their
    /// screenshot is, or saves `<test>-failure.png` and fails the test with the step that
    /// went wrong.
    pub(crate) async fn finish(self, steps: Result<PathBuf, String>, test: &str) {
        match steps {
            Ok(path) => {
                println!("{test} screenshot: {}", path.display());
                self.close().await;
            }
            Err(error) => {
                let shot = self.screenshot(&format!("{test}-failure.png")).await;
                self.close().await;
                panic!("the {test} test failed: {error} (screenshot: {shot:?})");
            }
        }
    }
}
