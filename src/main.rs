//! The `ccsync` binary: parse the command line and hand off.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ccsync::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ccsync: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(ccsync::cmd::main(cli))
}
