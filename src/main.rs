//! The `ferry` binary. Everything lives in the library; see `ferry::cli`.

fn main() {
    std::process::exit(ferry::cli::main());
}
