//! Enums kept in maps and punt records as plain integers (the BPF side writes and compares
//! them as `Variant as u8`); the agent reads them back with `TryFrom`, where an unknown value
//! is an error, never a fallback.

use core::fmt;

/// A value that names no variant of the enum it was read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: u32,
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} is not a known value", self.what, self.value)
    }
}

impl core::error::Error for UnknownValue {}

/// Declares a `#[repr(int)]` enum with `ALL` and `TryFrom<int>`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
        }

        impl TryFrom<$repr> for $name {
            type Error = $crate::wire::UnknownValue;

            fn try_from(value: $repr) -> Result<Self, Self::Error> {
                match value {
                    $($value => Ok($name::$variant),)+
                    _ => Err($crate::wire::UnknownValue {
                        what: stringify!($name),
                        value: value as u32,
                    }),
                }
            }
        }
    };
}
