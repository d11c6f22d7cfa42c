//! A throwaway PostgreSQL cluster, started from the server binaries installed on the machine.
//!
//! `pgevents demo`, the integration tests and the benchmarks all need a server they own: one
//! with `wal_level = logical`, on a free port, in a temporary directory, that they can stop,
//! restart and remove. [`TempCluster::start`] runs `initdb` and `pg_ctl` (as the `postgres`
//! user when the caller is root, since PostgreSQL refuses to run as root) and
//! [`TempCluster`]'s `Drop` stops the server and removes every file it created.
//!
//! ```no_run
//! let cluster = pgevents_tempdb::TempCluster::start(&pgevents_tempdb::Options::default())?;
//! println!("{}", cluster.url("postgres"));
//! # Ok::<_, pgevents_tempdb::Error>(())
//! ```

use std::ffi::CString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// What can go wrong while starting or stopping a throwaway cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install the PostgreSQL server \
         package (e.g. `apt-get install postgresql`) or set PGEVENTS_PG_BINDIR to its bin directory"
    )]
    BinariesNotFound,
    /// The caller is root and there is no `postgres` user to run the server as.
    #[error("running as root, but there is no `postgres` user to run PostgreSQL as: create one (`useradd postgres`) or run as a regular user")]
    NoServerUser,
    /// A file system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A server command (`initdb`, `pg_ctl`) failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command that failed.
        command: String,
        /// Its output, or the tail of the server log.
        detail: String,
    },
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Extra server settings, passed as `-c name=value`.
    pub settings: Vec<(String, String)>,
    /// Turn off fsync (fast, for tests and the demo; never for benchmarks of durability cost).
    pub fsync: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            settings: vec![
                ("wal_level".into(), "logical".into()),
                ("max_connections".into(), "200".into()),
                ("max_wal_senders".into(), "20".into()),
                ("max_replication_slots".into(), "20".into()),
            ],
            fsync: false,
        }
    }
}

/// A running throwaway cluster; dropping it stops the server and deletes its directory.
#[derive(Debug)]
pub struct TempCluster {
    dir: Option<tempfile::TempDir>,
    bindir: PathBuf,
    port: u16,
    run_as: Option<String>,
    server_opts: String,
}

impl TempCluster {
    /// Initialises a new cluster in a temporary directory and starts it on a free loopback port.
    pub fn start(options: &Options) -> Result<TempCluster, Error> {
        let bindir = find_bindir().ok_or(Error::BinariesNotFound)?;
        let run_as = if is_root() {
            Some("postgres".to_string())
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("pgevents-pg-")
            .tempdir()
            .map_err(|source| Error::Io {
                what: "creating a temporary directory for PostgreSQL".into(),
                source,
            })?;
        if let Some(user) = &run_as {
            chown_to(dir.path(), user)?;
        }
        let port = free_port()?;
        let mut server_opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.path().display()
        );
        if !options.fsync {
            server_opts.push_str(" -c fsync=off -c full_page_writes=off");
        }
        for (name, value) in &options.settings {
            server_opts.push_str(&format!(" -c {name}={value}"));
        }
        let cluster = TempCluster {
            dir: Some(dir),
            bindir,
            port,
            run_as,
            server_opts,
        };
        let data = cluster.data_dir();
        let mut initdb = vec![
            "-D".to_string(),
            data.display().to_string(),
            "-A".into(),
            "trust".into(),
            "-U".into(),
            "postgres".into(),
            "-E".into(),
            "UTF8".into(),
            "--no-instructions".into(),
        ];
        if !options.fsync {
            initdb.push("--no-sync".into());
        }
        cluster.run("initdb", &initdb)?;
        cluster.start_server()?;
        tracing::debug!(port, "throwaway PostgreSQL started");
        Ok(cluster)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        match &self.dir {
            Some(dir) => dir.path(),
            None => Path::new(""),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn start_server(&self) -> Result<(), Error> {
        let data = self.data_dir().display().to_string();
        let log = self.dir().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-o",
                &self.server_opts,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .map(|_| ())
    }

    /// Stops the server with the given shutdown mode (`smart`, `fast` or `immediate`).
    pub fn stop_server(&self, mode: &str) -> Result<(), Error> {
        let data = self.data_dir().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", mode, "-w", "stop"])
            .map(|_| ())
    }

    /// Restarts the server with the given shutdown mode, as `pg_ctl restart -m MODE` does.
    pub fn restart_server(&self, mode: &str) -> Result<(), Error> {
        self.stop_server(mode)?;
        self.start_server()
    }

    /// Runs a binary from the server's bin directory (as the server's user) and returns its output.
    pub fn run(&self, program: &str, args: &[impl AsRef<str>]) -> Result<Output, Error> {
        let path = self.bindir.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        command.args(args.iter().map(AsRef::as_ref));
        command.current_dir(self.dir()).stdin(Stdio::null());
        let rendered = format!(
            "{program} {}",
            args.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ")
        );
        let output = command.output().map_err(|source| Error::Io {
            what: format!("running {rendered}"),
            source,
        })?;
        if output.status.success() {
            return Ok(output);
        }
        let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if let Ok(log) = std::fs::read_to_string(self.dir().join("server.log")) {
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            detail.push_str("\nserver log:\n");
            detail.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        Err(Error::Command {
            command: rendered,
            detail,
        })
    }

    /// Stops the server and removes the cluster's directory.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop_and_remove()
    }

    fn stop_and_remove(&mut self) -> Result<(), Error> {
        let Some(dir) = self.dir.as_ref() else {
            return Ok(());
        };
        let stopped = if dir.path().join("data/postmaster.pid").exists() {
            self.stop_server("immediate")
        } else {
            Ok(())
        };
        if let Some(dir) = self.dir.take() {
            dir.close().map_err(|source| Error::Io {
                what: "removing the throwaway cluster's directory".into(),
                source,
            })?;
        }
        stopped
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if let Err(error) = self.stop_and_remove() {
            tracing::warn!(%error, "could not clean up the throwaway PostgreSQL cluster");
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn chown_to(path: &Path, user: &str) -> Result<(), Error> {
    let name = CString::new(user).map_err(|_| Error::NoServerUser)?;
    // SAFETY: `name` is a valid NUL-terminated string; getpwnam returns null or a valid record.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(Error::NoServerUser);
    }
    // SAFETY: `pw` was checked to be non-null above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| Error::Io {
        what: format!("giving {} to the {user} user", path.display()),
        source,
    })
}

fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
        what: "finding a free loopback port".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            what: "finding a free loopback port".into(),
            source,
        })
}

/// Finds the directory holding `initdb` and `pg_ctl`: `PGEVENTS_PG_BINDIR`, then
/// `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
fn find_bindir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PGEVENTS_PG_BINDIR").map(PathBuf::from) {
        return has_tools(&dir).then_some(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// A PostgreSQL server shared by a whole test process, and fresh databases on it.
///
/// The server is `PGEVENTS_TEST_DATABASE_URL` when set (any database on an existing server
/// where the user may `CREATE DATABASE`), else a [`TempCluster`] started on first use and
/// removed when the process exits.
pub mod testing {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, OnceLock};

    use super::{Error, Options, TempCluster};

    static CLUSTER: Mutex<Option<TempCluster>> = Mutex::new(None);
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn remove_cluster() {
        if let Ok(mut guard) = CLUSTER.lock() {
            drop(guard.take());
        }
    }

    fn server() -> Result<&'static str, Error> {
        let url = SERVER.get_or_init(|| {
            if let Ok(url) = std::env::var("PGEVENTS_TEST_DATABASE_URL") {
                return Ok(url);
            }
            let cluster = TempCluster::start(&Options::default()).map_err(|e| e.to_string())?;
            let url = cluster.url("postgres");
            if let Ok(mut guard) = CLUSTER.lock() {
                *guard = Some(cluster);
            }
            // SAFETY: registering a plain extern "C" fn with no captured state.
            unsafe { libc::atexit(remove_cluster) };
            Ok(url)
        });
        url.as_deref().map_err(|detail| Error::Command {
            command: "starting the test PostgreSQL server".into(),
            detail: detail.clone(),
        })
    }

    /// Replaces the database name of a `postgres://` URL.
    pub fn with_database(url: &str, database: &str) -> String {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let base = match base[scheme_end..].find('/') {
            Some(i) => &base[..scheme_end + i],
            None => base,
        };
        match query {
            Some(q) => format!("{base}/{database}?{q}"),
            None => format!("{base}/{database}"),
        }
    }

    /// Creates a new, empty database for one test and returns its URL.
    pub fn fresh_database(prefix: &str) -> Result<String, Error> {
        let server = server()?;
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let psql = super::find_bindir()
            .map(|d| d.join("psql"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| "psql".into());
        let out = std::process::Command::new(psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server, "-c"])
            .arg(format!("CREATE DATABASE \"{name}\""))
            .output()
            .map_err(|source| Error::Io {
                what: "running psql to create a test database".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("CREATE DATABASE {name}"),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(with_database(server, &name))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn database_names_are_replaced() {
            assert_eq!(
                super::with_database("postgres://u@h:5/postgres?sslmode=disable", "x"),
                "postgres://u@h:5/x?sslmode=disable"
            );
            assert_eq!(super::with_database("postgres://h", "x"), "postgres://h/x");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_restarts_and_removes_everything() {
        let cluster = TempCluster::start(&Options::default()).expect("cluster starts");
        let dir = cluster.dir().to_path_buf();
        assert!(dir.join("data/postmaster.pid").exists());
        cluster.restart_server("immediate").expect("restarts");
        assert!(std::net::TcpStream::connect(("127.0.0.1", cluster.port())).is_ok());
        cluster.shutdown().expect("shuts down");
        assert!(!dir.exists(), "the cluster directory is removed");
    }
}
