//! `pgevents init`: writes a commented starter config for a database.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use pgevents_daemon::DaemonError;

/// Arguments of `pgevents init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The database whose tables the config lists (the config itself reads the URL from
    /// the environment, never from the file).
    #[arg(long, env = pgevents_daemon::DATABASE_URL_ENV, value_name = "URL")]
    database_url: String,
    /// Write the config to this file (which must not exist yet) instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub async fn run(args: Args) -> ExitCode {
    match init(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn init(args: Args) -> Result<(), DaemonError> {
    let text = pgevents_daemon::starter_config(&args.database_url).await?;
    let Some(path) = args.out else {
        print!("{text}");
        return Ok(());
    };
    // create_new: an existing file is never overwritten, even one created meanwhile.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => DaemonError::Usage(format!(
                "--out {}: the file exists already and is left unchanged; remove it or choose another file",
                path.display()
            )),
            _ => DaemonError::Runtime(format!("--out {}: cannot create it: {e}", path.display())),
        })?;
    if let Err(e) = file.write_all(text.as_bytes()) {
        // Nothing half-written is left behind.
        let _ = std::fs::remove_file(&path);
        return Err(DaemonError::Runtime(format!(
            "--out {}: cannot write it: {e}",
            path.display()
        )));
    }
    eprintln!(
        "wrote {}: uncomment the [[trigger]] blocks to watch, export {}, then run `pgevents check --config {}`",
        path.display(),
        pgevents_daemon::DATABASE_URL_ENV,
        path.display()
    );
    Ok(())
}
