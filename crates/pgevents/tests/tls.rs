//! TLS to PostgreSQL through `sslmode`, against a throwaway cluster with `ssl = on` and a
//! certificate authority made for the test: every mode as libpq means it, a clear error for
//! an untrusted certificate, and logical capture's replication connection over TLS too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgevents_tempdb::{Options, TempCluster};

const WAIT: Duration = Duration::from_secs(60);

/// A CA, a server certificate for `localhost` signed by it, and an unrelated CA.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn make() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl runs (install the openssl command-line tool)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        for ca in ["ca", "other_ca"] {
            let subject = format!("/CN=pgevents test {ca}");
            let (key, crt) = (format!("{ca}.key"), format!("{ca}.crt"));
            let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
            args.extend(ec);
            args.extend([
                "-keyout",
                &key,
                "-out",
                &crt,
                "-subj",
                &subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(&args);
        }
        let mut args = vec!["req", "-nodes"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&args);
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ]);
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Turns TLS on in `cluster` with the server certificate, as the server's own user.
async fn enable_ssl(cluster: &TempCluster, certs: &Certs) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let owner = std::fs::metadata(cluster.dir()).expect("cluster dir");
    for name in ["server.crt", "server.key"] {
        let to = cluster.dir().join(name);
        std::fs::copy(certs.path(name), &to).expect("copy");
        std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).expect("chown");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let admin = plain(&cluster.url("postgres")).await;
    for sql in [
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            cluster.dir().join("server.crt").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            cluster.dir().join("server.key").display()
        ),
        "ALTER SYSTEM SET ssl = on".into(),
        "SELECT pg_reload_conf()".into(),
    ] {
        admin.batch_execute(&sql).await.expect("enable ssl");
    }
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
        cluster.port()
    );
    let deadline = Instant::now() + WAIT;
    while pgevents_postgres::connect(&url, None).await.is_err() {
        assert!(Instant::now() < deadline, "the server turns TLS on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn plain(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

async fn uses_tls(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

fn url(host: &str, port: u16, params: &str) -> String {
    format!("postgres://postgres@{host}:{port}/postgres?{params}")
}

fn root(path: &Path) -> String {
    format!("sslrootcert={}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_is_honoured_like_libpq() {
    let certs = Certs::make();
    let cluster = TempCluster::start(&Options::default()).expect("cluster");
    enable_ssl(&cluster, &certs).await;
    let port = cluster.port();
    let ca = root(&certs.path("ca.crt"));
    let other = root(&certs.path("other_ca.crt"));

    // require: encrypted, certificate not checked (no roots given).
    let c = pgevents_postgres::connect(&url("127.0.0.1", port, "sslmode=require"), None)
        .await
        .expect("sslmode=require connects");
    assert!(uses_tls(&c).await, "sslmode=require uses TLS");
    // disable: plain; prefer (also the default): TLS since the server offers it.
    let c = pgevents_postgres::connect(&url("127.0.0.1", port, "sslmode=disable"), None)
        .await
        .expect("sslmode=disable connects");
    assert!(!uses_tls(&c).await, "sslmode=disable does not use TLS");
    let c = pgevents_postgres::connect(&url("127.0.0.1", port, "application_name=x"), None)
        .await
        .expect("default sslmode connects");
    assert!(
        uses_tls(&c).await,
        "sslmode=prefer (the default) uses TLS when offered"
    );

    // verify-full with the right root and the certificate's host name.
    let c = pgevents_postgres::connect(
        &url("localhost", port, &format!("sslmode=verify-full&{ca}")),
        None,
    )
    .await
    .expect("verify-full with the right root connects");
    assert!(uses_tls(&c).await);
    // verify-ca checks the chain only: an IP address the certificate does not name is fine...
    let c = pgevents_postgres::connect(
        &url("127.0.0.1", port, &format!("sslmode=verify-ca&{ca}")),
        None,
    )
    .await
    .expect("verify-ca with the right root connects by IP");
    assert!(uses_tls(&c).await);
    // ... but not for verify-full.
    let err = pgevents_postgres::connect(
        &url("127.0.0.1", port, &format!("sslmode=verify-full&{ca}")),
        None,
    )
    .await
    .expect_err("verify-full refuses a certificate for another name");
    assert!(
        matches!(err, pgevents_postgres::Error::Tls { .. }) && err.to_string().contains("host"),
        "{err}"
    );
    // A wrong root: a clear error naming the mode and what to fix.
    for mode in ["verify-full", "verify-ca", "require"] {
        let err = pgevents_postgres::connect(
            &url("localhost", port, &format!("sslmode={mode}&{other}")),
            None,
        )
        .await
        .expect_err("an untrusted certificate is refused");
        let text = err.to_string();
        assert!(
            matches!(err, pgevents_postgres::Error::Tls { .. }),
            "{text}"
        );
        assert!(
            text.contains(&format!("sslmode={mode}")) && text.contains("sslrootcert"),
            "{text}"
        );
        assert!(
            !err.is_connection(),
            "a TLS refusal is not transient: {text}"
        );
    }
    // verify-full without any root says how to give one.
    let err = pgevents_postgres::connect(&url("localhost", port, "sslmode=verify-full"), None)
        .await
        .expect_err("verify-full needs roots");
    assert!(err.to_string().contains("sslrootcert="), "{err}");
    // Key=value strings take the same parameters.
    let c = pgevents_postgres::connect(
        &format!(
            "host=localhost port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{}'",
            certs.path("ca.crt").display()
        ),
        None,
    )
    .await
    .expect("a key=value string with verify-full connects");
    assert!(uses_tls(&c).await);

    // A server without TLS: require fails clearly, prefer falls back to plain.
    let admin = plain(&cluster.url("postgres")).await;
    for sql in ["ALTER SYSTEM SET ssl = off", "SELECT pg_reload_conf()"] {
        admin.batch_execute(sql).await.expect("ssl off");
    }
    let deadline = Instant::now() + WAIT;
    let err = loop {
        match pgevents_postgres::connect(&url("127.0.0.1", port, "sslmode=require"), None).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(Instant::now() < deadline, "the server turns TLS off");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        matches!(err, pgevents_postgres::Error::Tls { .. }) && err.to_string().contains("ssl = on"),
        "{err}"
    );
    let c = pgevents_postgres::connect(&url("127.0.0.1", port, "sslmode=prefer"), None)
        .await
        .expect("prefer falls back to plain");
    assert!(!uses_tls(&c).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_deliver_over_verified_tls_in_both_capture_modes() {
    let certs = Certs::make();
    let cluster = TempCluster::start(&Options::default()).expect("cluster");
    enable_ssl(&cluster, &certs).await;
    let admin = plain(&cluster.url("postgres")).await;
    admin
        .batch_execute(
            "CREATE TABLE by_trigger (id int PRIMARY KEY); CREATE TABLE by_wal (id int PRIMARY KEY);",
        )
        .await
        .expect("tables");
    let tls_url = url(
        "localhost",
        cluster.port(),
        &format!("sslmode=verify-full&{}", root(&certs.path("ca.crt"))),
    );
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = |got: Arc<Mutex<Vec<String>>>| {
        move |e: pgevents::Event| {
            got.lock()
                .expect("lock")
                .push(format!("{}.{}", e.table(), e.action()));
            std::future::ready(Ok::<_, std::convert::Infallible>(()))
        }
    };
    let trigger_mode = pgevents::Listener::builder(&tls_url)
        .on("by_trigger", handler(got.clone()))
        .build()
        .await
        .expect("trigger-mode listener over TLS");
    let logical = pgevents::Listener::builder(&tls_url)
        .log_schema("pgevents_wal")
        .capture_logical("pgevents_tls", "pgevents_tls")
        .on("by_wal", handler(got.clone()))
        .build()
        .await
        .expect("logical listener over TLS");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = |listener: pgevents::Listener| {
        let mut stopped = stopped.clone();
        tokio::spawn(listener.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }))
    };
    let tasks = [run(trigger_mode), run(logical)];
    admin
        .batch_execute("INSERT INTO by_trigger VALUES (1); INSERT INTO by_wal VALUES (1);")
        .await
        .expect("writes");
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = got.lock().expect("lock").clone();
        if seen.contains(&"by_trigger.INSERT".to_string())
            && seen.contains(&"by_wal.INSERT".to_string())
        {
            break;
        }
        assert!(Instant::now() < deadline, "both events arrive: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every pgevents connection, the replication one included, is encrypted.
    let rows = admin
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.application_name = 'pgevents'",
            &[],
        )
        .await
        .expect("activity");
    assert!(
        rows.iter().any(|r| r.get::<_, String>(0) == "walsender"),
        "the replication connection is listed"
    );
    for r in &rows {
        assert!(
            r.get::<_, bool>(1),
            "{} connection uses TLS",
            r.get::<_, String>(0)
        );
    }
    let _ = stop.send(true);
    for task in tasks {
        tokio::time::timeout(WAIT, task)
            .await
            .expect("listener stops")
            .expect("task")
            .expect("run");
    }
}
