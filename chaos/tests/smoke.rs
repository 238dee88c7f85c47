//! A CI-sized run of the chaos harness against the debug gateway: two
//! scenarios (Redis killed and restarted; one pod's link to Redis reset)
//! with 150 subscribers over three pods, `--check` on — so nothing may be
//! lost outside the fault and its recovery, nothing duplicated, every
//! subscriber must receive again and no pod may exit — and the figures
//! must show the pods noticing the fault and recovering. About 30 seconds.

use serde_json::Value;
use std::process::Command;
use test_support::pod::built_binary;
use test_support::TempDir;

#[test]
fn redis_kill_and_link_reset_lose_only_what_the_fault_costs() {
    let out = TempDir::new("chaos-smoke");
    let status = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .arg("--gateway-bin")
        .arg(built_binary("gateway", "gateway"))
        .arg("--out")
        .arg(out.root())
        .arg("--check")
        .args(["scenarios", "--only", "redis-kill,link-reset"])
        .args(["--subscribers", "150", "--topics", "3", "--rate", "30"])
        .args(["--warmup", "2", "--observe", "6", "--down", "1"])
        .status()
        .expect("run chaos");
    assert!(status.success(), "chaos --check exited with {status}");

    for name in ["redis-kill", "link-reset"] {
        let text = std::fs::read_to_string(out.path(&format!("{name}.json"))).unwrap();
        let o: Value = serde_json::from_str(&text).unwrap();
        let l = &o["losses"];
        assert!(l["due"].as_u64().unwrap() > 0, "{name}: {l}");
        assert_eq!(l["lost_after_recovery"], 0, "{name}: {l}");
        assert_eq!(o["recovery"]["never"], 0, "{name}: {}", o["recovery"]);
        // Every pod (link-reset: the cut one) saw Redis go away and come back.
        let pods = o["pods"].as_array().unwrap();
        let saw =
            |p: &Value| p["redis_down_after_ms"].is_number() && p["redis_up_again_ms"].is_number();
        match name {
            "redis-kill" => assert!(pods.iter().all(saw), "{name}: {pods:?}"),
            _ => assert!(saw(&pods[0]), "{name}: {pods:?}"),
        }
    }
}
