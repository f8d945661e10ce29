//! The `rudder` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    rudder_operator::cli::Cli::parse().run()
}
