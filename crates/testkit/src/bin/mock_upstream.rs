//! `tollgate-mock-upstream`: runs the testkit mock upstream until SIGINT or SIGTERM.
//!
//! ```text
//! tollgate-mock-upstream [--listen 127.0.0.1:0] [--threads 1]
//! ```
//! Prints the bound address alone on one line of stdout once it accepts connections, so a script
//! can read it. `--threads 1` (the default) runs a single-threaded runtime: on a small box shared
//! with a load generator and a proxy that is the fastest setting, with no cross-thread wake-ups.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use testkit::MockUpstream;

/// Exit code for a bad command line (sysexits `EX_USAGE`).
const EX_USAGE: u8 = 64;

const USAGE: &str = "usage: tollgate-mock-upstream [--listen ADDR] [--threads N]
  --listen ADDR   address to bind (default 127.0.0.1:0 = any free port)
  --threads N     runtime worker threads (default 1 = single-threaded runtime)
";

struct Args {
    listen: SocketAddr,
    threads: usize,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        threads: 1,
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                parsed.listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--threads" => {
                let v = value("--threads")?;
                parsed.threads = match v.parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("--threads {v}: expected a positive integer")),
                };
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Some(parsed))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            let _ = std::io::stdout().write_all(USAGE.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            let _ = writeln!(
                std::io::stderr(),
                "tollgate-mock-upstream: {message}\n{USAGE}"
            );
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let result = runtime.and_then(|rt| rt.block_on(run(args.listen)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tollgate-mock-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(listen: SocketAddr) -> std::io::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let upstream = MockUpstream::start(listen).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", upstream.addr())?;
        out.flush()?;
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    upstream.shutdown().await;
    Ok(())
}
