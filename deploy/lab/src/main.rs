//! The `fabric-lab` command: `up`, `status`, `exec`, `down` (see [`fabric_lab::cli`]).

fn main() -> std::process::ExitCode {
    fabric_lab::cli::main()
}
