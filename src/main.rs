//! The `smallcap` command: a thin layer over the library (one module per subcommand in `cli/`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
