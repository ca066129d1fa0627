//! Entry point: PID 1 becomes the init, anything else runs the command.

use clap::Parser;

fn main() {
    let cli = tusk::cli::Cli::parse();
    // Checked before any runtime or thread exists: init mode blocks signals
    // for the whole process.
    let code = if cli.is_daemon() && nix::unistd::getpid().as_raw() == 1 {
        tusk::init::run()
    } else {
        tusk::cli::dispatch(cli)
    };
    std::process::exit(code);
}
