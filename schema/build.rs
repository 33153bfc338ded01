//! Generates Rust from the schemas with the `capnp` tool (Debian package `capnproto`).

fn main() {
    let files = [
        "common.capnp",
        "device.capnp",
        "directory.capnp",
        "host.capnp",
        "keyguard.capnp",
        "local.capnp",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let mut cmd = capnpc::CompilerCommand::new();
    for f in files {
        cmd.file(f);
    }
    if let Err(e) = cmd.run() {
        // A build script reports failure by exiting non-zero; say what to install.
        eprintln!("capnp schema compilation failed: {e}\n(is the `capnp` tool installed? `make deps` installs Debian's capnproto)");
        std::process::exit(1);
    }
}
