//! The native nft `queue` path, on a kernel that has it. This machine's kernel lacks
//! `CONFIG_NFT_QUEUE`, so fabricd enforces with the xtables NFQUEUE target here; the test
//! boots Debian's packaged kernel (which builds `nft_queue` as a module) in a VM with
//! virtme-ng, on this machine's filesystem, and runs the shared reachability sample suite end
//! to end there: fabricd must detect nft's queue and enforce with it, and every case must
//! pass.

use std::time::Duration;

use fabric_tests::{in_vm, lab_name, require_root, vm_kernel};

#[test]
fn native_nft_queue_enforces_the_sample_suite_on_a_kernel_that_has_it() {
    require_root();
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fabric_lab = workspace.join("target/release/fabric-lab");
    assert!(
        fabric_lab.exists(),
        "build the release binaries first (scripts/test.sh does)"
    );
    let (kernel, version) = vm_kernel("nft_queue").unwrap();
    let name = lab_name("nftq");
    let script = format!(
        "uname -r; target/release/fabric-lab netpol --name {name} --cases tests/netpol/sample-cases.yaml"
    );
    let out = in_vm(&kernel, &script, Duration::from_secs(900)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        stdout.lines().next() == Some(version.as_str()),
        "the VM did not boot {version}"
    );
    for node in ["node1", "node2", "node3"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{node}: ")) && l.ends_with("queue rules: nft)")),
            "{node} does not enforce with nft's native queue"
        );
    }
    assert!(stdout.contains("cases: 10 passed, 0 failed"), "{stdout}");
}
