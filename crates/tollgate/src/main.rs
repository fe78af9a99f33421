//! `tollgate`: the binary. CLI, config loading, wiring and exit codes; no business logic.

mod demo;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: fewer bytes of overhead per small allocation than the system allocator (the
/// directory holds millions of them) and faster on the request path. Its 2.x line (the `v2`
/// feature), not 3.x: with 1,000,000 keys loaded, measured on a 2-core box, resident memory
/// 333 -> 287 MiB ready and 370 -> 322 MiB after 3 s of governed load. In `bench/ab` (thin
/// LTO, same run): governed 35,150 -> 35,157 req/s and 31.8 -> 31.9 us of gateway CPU per
/// request; passthrough 46,230 -> 46,989 req/s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process. mimalloc asks the kernel for huge pages on its
/// arenas (`madvise`), so memory is resident in 2 MiB steps and a freed region stays resident
/// until all of it is free. With 1,000,000 keys loaded, measured on a 2-core box (mimalloc 3.x):
/// resident memory 348 -> 330 MiB at start, 390 -> 357 MiB after 3 s of governed load, requests/s
/// unchanged within the run-to-run spread.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Not fatal: only memory use is at stake (a kernel without THP, or a seccomp filter).
        eprintln!("tollgate: transparent huge pages could not be disabled: {e}");
    }
}

/// Exit code for a bad configuration (EX_USAGE, like linkerd and sysexits).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code when an input file cannot be read (EX_NOINPUT).
pub const EXIT_NOINPUT: u8 = 66;
/// Exit code when a listener cannot be bound (EX_OSERR).
pub const EXIT_OSERR: u8 = 71;
/// Exit code when the store cannot be opened (EX_IOERR).
pub const EXIT_IOERR: u8 = 74;

#[derive(Parser, Debug)]
#[command(
    name = "tollgate",
    version,
    about = "A payment-aware API and LLM gateway"
)]
struct Cli {
    /// Log filter (e.g. `info`, `tollgate=debug`); also `RUST_LOG`.
    #[arg(long, global = true, env = "TOLLGATE_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short, env = "TOLLGATE_CONFIG")]
        config: PathBuf,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Run a self-contained demo: gateway, mock upstream and demo data, with curl lines.
    Demo {
        /// Proxy listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin listener.
        #[arg(long, default_value = "127.0.0.1:8081")]
        admin_listen: String,
        /// Directory for the demo's SQLite file (a temporary one by default).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Bulk-create consumers with one key each straight into the store file (offline).
    Seed {
        /// Configuration file (for the store path and plan check).
        #[arg(long, short)]
        config: PathBuf,
        /// Tenant id (created when missing).
        #[arg(long)]
        tenant: String,
        /// Plan id.
        #[arg(long)]
        plan: String,
        /// How many consumers.
        #[arg(long)]
        consumers: usize,
        /// Prepaid balance of each, decimal.
        #[arg(long, default_value = "0")]
        balance: String,
        /// Consumer id prefix.
        #[arg(long, default_value = "seed-")]
        prefix: String,
        /// File to write the keys to, one per line.
        #[arg(long)]
        keys_out: PathBuf,
    },
    /// Print the errors reference (docs/errors.md).
    ErrorsDoc,
    /// Call a URL as a paying client: pay x402 challenges within a spend policy, back off on
    /// quota 402s, show the remedy of 402s a human must act on.
    Pay(tollgate_client::cli::PayArgs),
    /// Call the admin API.
    Admin {
        /// Admin API base URL.
        #[arg(
            long,
            env = "TOLLGATE_ADMIN_URL",
            default_value = "http://127.0.0.1:8081"
        )]
        url: String,
        /// Admin token.
        #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
        #[command(subcommand)]
        cmd: tollgate_admin::cli::AdminCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Validate a configuration file; exit 64 with every problem listed when it is bad.
    Check {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_OSERR);
        }
    };
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve { config } => serve::serve(config).await,
            Cmd::Config {
                cmd: ConfigCmd::Check { config },
            } => match serve::load_config_for_serving(&config) {
                Ok(_) => {
                    eprintln!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            },
            Cmd::Demo {
                listen,
                admin_listen,
                data_dir,
            } => demo::run(listen, admin_listen, data_dir).await,
            Cmd::Seed {
                config,
                tenant,
                plan,
                consumers,
                balance,
                prefix,
                keys_out,
            } => serve::seed(
                &config, &tenant, &plan, consumers, &balance, &prefix, &keys_out,
            ),
            Cmd::Pay(args) => {
                let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
                ExitCode::from(tollgate_client::cli::run(args, &mut out, &mut err).await)
            }
            Cmd::ErrorsDoc => {
                use std::io::Write;
                let _ = std::io::stdout()
                    .write_all(tollgate_core::error::render_errors_doc().as_bytes());
                ExitCode::SUCCESS
            }
            Cmd::Admin { url, token, cmd } => {
                let mut out = std::io::stdout();
                match tollgate_admin::cli::run(cmd, &url, &token, &mut out).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("tollgate admin: {e}");
                        ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
                    }
                }
            }
        }
    })
}

fn init_logging(filter: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}
