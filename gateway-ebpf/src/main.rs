//! The gateway's fast path. Two entry points, one translation:
//!
//! - `gateway_xdp`: native (driver) XDP on real NICs, where it runs before any skb exists;
//! - `gateway_tc`: TCX ingress on veth and other virtual devices, where native XDP would switch
//!   off the peer's TSO and cannot handle the partial checksums of locally generated packets.
//!
//! Both hand the packet to [`nat::translate`] through the [`packet::Packet`] trait, which hides
//! the only real difference between the hooks: how bytes are written and checksums kept right.
#![no_std]
#![no_main]

mod forward;
mod icmp_error;
mod maps;
mod nat;
mod neighbour;
mod packet;
mod punt;
mod scratch;
mod untranslate;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::nat::Outcome;

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let mut ctx = ctx;
    match nat::translate(&mut ctx, scratch::fresh_quote()) {
        Outcome::Forward(_) => forward::xdp_forward(&mut ctx),
        Outcome::Stack(_) => xdp_action::XDP_PASS,
        Outcome::Drop(_) => xdp_action::XDP_DROP,
        Outcome::Punt(reason) => punt::punt_xdp(&mut ctx, reason),
    }
}

#[classifier]
pub fn gateway_tc(ctx: TcContext) -> i32 {
    let mut ctx = ctx;
    match nat::translate(&mut ctx, scratch::fresh_quote()) {
        Outcome::Forward(_) => forward::tc_forward(&mut ctx),
        Outcome::Stack(_) => TC_ACT_OK,
        Outcome::Drop(_) => TC_ACT_SHOT,
        Outcome::Punt(reason) => punt::punt_tc(&mut ctx, reason),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
