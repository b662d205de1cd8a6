//! `message_table!`: the wire's message table, declared once. Each row names a message's kind
//! byte, its variant and its fields, each field with the codec (a module of
//! [`super::fields`]) and the bounds it travels with. From the one table come the enum, its
//! `kind()`, its `encode()` and its strict `decode()` (fields in table order; an unknown kind
//! or a trailing byte is an error), so the three can no longer disagree. The shape follows
//! rustls' `enum_builder!`.

/// Expands to nothing but its last argument: lets a pattern mention a table entry (so the
/// entry drives the repetition) while matching anything.
macro_rules! ignore_then {
    ($ignored:ty, $($then:tt)*) => {
        $($then)*
    };
}

macro_rules! message_table {
    (
        $(#[$meta:meta])*
        pub enum $Enum:ident {
            $(
                $(#[$vmeta:meta])*
                $kind:literal => $Variant:ident
                $( {
                    $(
                        $(#[$fmeta:meta])*
                        $field:ident : $fty:ty = $codec:ident $( ( $($arg:expr),* ) )?
                    ),* $(,)?
                } )?
                $( ( $nty:ty = $ncodec:ident $( ( $($narg:expr),* ) )? ) )?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub enum $Enum {
            $(
                $(#[$vmeta])*
                $Variant
                $( { $( $(#[$fmeta])* $field: $fty ),* } )?
                $( ( $nty ) )?,
            )*
        }

        impl $Enum {
            /// The kind byte that selects this message in a frame.
            pub fn kind(&self) -> u8 {
                match self {
                    $(
                        $Enum::$Variant
                        $( { $( $field: _ ),* } )?
                        $( ( ignore_then!($nty, _) ) )? => $kind,
                    )*
                }
            }

            /// Appends the payload (the fields, in table order).
            pub fn encode(&self, out: &mut bytes::BytesMut) -> Result<(), $crate::wire::WireError> {
                let mut w = $crate::wire::Writer::new(out);
                let w = &mut w;
                match self {
                    $(
                        $Enum::$Variant
                        $( { $( $field ),* } )?
                        $( ( ignore_then!($nty, value) ) )? => {
                            $( $( super::fields::$codec::put(w, $field $( , $($arg),* )? )?; )* )?
                            $( super::fields::$ncodec::put(w, value $( , $($narg),* )? )?; )?
                        }
                    )*
                }
                Ok(())
            }

            /// Decodes a payload of message kind `kind`: every field bounded, no byte left over.
            pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, $crate::wire::WireError> {
                let mut reader = $crate::wire::Reader::new(payload);
                let r = &mut reader;
                let msg = match kind {
                    $(
                        $kind => $Enum::$Variant
                        $( { $( $field: super::fields::$codec::get(r $( , $($arg),* )? )? ),* } )?
                        $( ( super::fields::$ncodec::get(r $( , $($narg),* )? )? ) )?,
                    )*
                    other => return Err($crate::wire::WireError::UnknownKind(other)),
                };
                reader.finish()?;
                Ok(msg)
            }
        }
    };
}

pub(super) use {ignore_then, message_table};
