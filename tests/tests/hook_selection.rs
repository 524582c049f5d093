//! `hook = "auto"` tells virtual devices from NICs by the bus behind them (`ethtool -i`).

use gateway_tests::netns::{Netns, unique_prefix};
use gateway_user::system::driver_info;

#[test]
fn a_veth_is_recognised_as_virtual() {
    let netns = Netns::create(&format!("{}-hook", unique_prefix())).expect("netns");
    netns
        .sh("ip link add probe0 type veth peer name probe1")
        .expect("veth");
    let info = netns
        .spawn(|| Ok(driver_info("probe0")?))
        .join()
        .expect("thread")
        .expect("driver info");
    assert_eq!(info.driver, "veth");
    assert!(info.is_virtual(), "{info:?}");
    let missing = netns
        .spawn(|| Ok(driver_info("nosuchdev0").is_err()))
        .join()
        .expect("thread");
    assert!(missing.expect("probe"), "a missing device must be an error");
}
