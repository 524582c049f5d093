//! Fragmented datagrams: the translation found for the first fragment, kept for the rest.

/// A fragmented datagram: the key of `FRAGMENTS`. Only the first fragment carries ports, so
/// the translation found for it is remembered for the others under the datagram's identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragmentKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub id: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// The addresses a fragmented datagram's fragments get.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragmentTranslation {
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// Datagrams being fragmented through the gateway at once.
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 16384;

#[cfg(feature = "user")]
// SAFETY: repr(C), byte arrays and bytes, no implicit padding.
unsafe impl aya::Pod for FragmentKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), byte arrays.
unsafe impl aya::Pod for FragmentTranslation {}
