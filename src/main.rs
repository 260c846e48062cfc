//! The `enipeer` binary: parses the command line and hands over to the library.

fn main() {
    std::process::exit(enipeer::cli::main());
}
