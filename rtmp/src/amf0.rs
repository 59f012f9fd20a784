//! AMF0 (Action Message Format 0) values: the encoding of RTMP commands and metadata.
//!
//! Only what RTMP peers actually send is supported: number, boolean, string, long
//! string, object, null, undefined, ECMA array, strict array and date. References,
//! typed objects, XML documents and the AMF3 switch are refused with an error rather than
//! guessed at. Nesting is limited ([`DEFAULT_MAX_DEPTH`]) so that a hostile
//! `{ { { ... } } }` cannot exhaust the stack, and no length read from the input is used
//! to pre-allocate memory beyond what the input can actually hold.

use bytes::BufMut;

use super::reader::Reader;

/// Nesting limit used by [`decode_all`]: real metadata is 2–3 levels deep.
pub const DEFAULT_MAX_DEPTH: usize = 32;

mod marker {
    pub const NUMBER: u8 = 0x00;
    pub const BOOLEAN: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const OBJECT: u8 = 0x03;
    pub const NULL: u8 = 0x05;
    pub const UNDEFINED: u8 = 0x06;
    pub const REFERENCE: u8 = 0x07;
    pub const ECMA_ARRAY: u8 = 0x08;
    pub const OBJECT_END: u8 = 0x09;
    pub const STRICT_ARRAY: u8 = 0x0a;
    pub const DATE: u8 = 0x0b;
    pub const LONG_STRING: u8 = 0x0c;
}

/// Why AMF0 bytes could not be decoded or a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Amf0Error {
    #[error("value truncated")]
    Truncated,
    #[error("unsupported AMF0 type marker 0x{0:02x}")]
    UnsupportedType(u8),
    #[error("object end marker where a value was expected")]
    UnexpectedObjectEnd,
    #[error("values nested deeper than {0} levels")]
    DepthExceeded(usize),
    #[error("string of {0} bytes is too long to encode")]
    StringTooLong(usize),
    #[error("array of {0} elements is too long to encode")]
    ArrayTooLong(usize),
}

/// One AMF0 value. Objects and ECMA arrays keep their properties in wire order.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    Number(f64),
    Boolean(bool),
    /// A string or long string (the encoder picks the form by length). Invalid UTF-8 is
    /// replaced rather than refused: metadata from encoders is not always clean.
    String(String),
    Object(Vec<(String, Amf0Value)>),
    Null,
    Undefined,
    EcmaArray(Vec<(String, Amf0Value)>),
    StrictArray(Vec<Amf0Value>),
    /// Milliseconds since the Unix epoch, and the (unused, usually 0) time zone.
    Date {
        millis: f64,
        time_zone: i16,
    },
}

impl Amf0Value {
    /// Builds an object from `(key, value)` pairs.
    pub fn object<K: Into<String>>(props: impl IntoIterator<Item = (K, Amf0Value)>) -> Self {
        Amf0Value::Object(props.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// Shorthand for a string value.
    pub fn string(s: impl Into<String>) -> Self {
        Amf0Value::String(s.into())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The properties of an object or ECMA array.
    pub fn properties(&self) -> Option<&[(String, Amf0Value)]> {
        match self {
            Amf0Value::Object(p) | Amf0Value::EcmaArray(p) => Some(p),
            _ => None,
        }
    }

    /// The first property named `key` of an object or ECMA array.
    pub fn get(&self, key: &str) -> Option<&Amf0Value> {
        self.properties()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// `get(key)` as a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Amf0Value::as_str)
    }
}

/// Decodes every value in `bytes` (a command or data message body).
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Amf0Value>, Amf0Error> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while r.remaining() > 0 {
        out.push(decode_value(&mut r, DEFAULT_MAX_DEPTH)?);
    }
    Ok(out)
}

/// Decodes the first value of `bytes`; returns it and the number of bytes it took.
pub fn decode_one(bytes: &[u8]) -> Result<(Amf0Value, usize), Amf0Error> {
    let mut r = Reader::new(bytes);
    let v = decode_value(&mut r, DEFAULT_MAX_DEPTH)?;
    Ok((v, r.position()))
}

pub(crate) fn decode_value(r: &mut Reader<'_>, depth_left: usize) -> Result<Amf0Value, Amf0Error> {
    let m = r.u8().ok_or(Amf0Error::Truncated)?;
    let v = match m {
        marker::NUMBER => Amf0Value::Number(r.f64_be().ok_or(Amf0Error::Truncated)?),
        marker::BOOLEAN => Amf0Value::Boolean(r.u8().ok_or(Amf0Error::Truncated)? != 0),
        marker::STRING => Amf0Value::String(read_short_string(r)?),
        marker::LONG_STRING => {
            let len = r.u32_be().ok_or(Amf0Error::Truncated)?;
            let len = usize::try_from(len).map_err(|_| Amf0Error::Truncated)?;
            let b = r.bytes(len).ok_or(Amf0Error::Truncated)?;
            Amf0Value::String(String::from_utf8_lossy(b).into_owned())
        }
        marker::OBJECT => {
            let depth = enter(depth_left)?;
            Amf0Value::Object(read_properties(r, depth, false)?)
        }
        marker::NULL => Amf0Value::Null,
        marker::UNDEFINED => Amf0Value::Undefined,
        marker::ECMA_ARRAY => {
            let depth = enter(depth_left)?;
            // The count is advisory (encoders get it wrong); the end marker is what counts.
            r.u32_be().ok_or(Amf0Error::Truncated)?;
            Amf0Value::EcmaArray(read_properties(r, depth, true)?)
        }
        marker::STRICT_ARRAY => {
            let depth = enter(depth_left)?;
            let count = r.u32_be().ok_or(Amf0Error::Truncated)?;
            let count = usize::try_from(count).map_err(|_| Amf0Error::Truncated)?;
            // Each element takes at least one byte: a larger claim cannot be honest.
            if count > r.remaining() {
                return Err(Amf0Error::Truncated);
            }
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(decode_value(r, depth)?);
            }
            Amf0Value::StrictArray(items)
        }
        marker::DATE => {
            let millis = r.f64_be().ok_or(Amf0Error::Truncated)?;
            let time_zone = r.i16_be().ok_or(Amf0Error::Truncated)?;
            Amf0Value::Date { millis, time_zone }
        }
        marker::OBJECT_END => return Err(Amf0Error::UnexpectedObjectEnd),
        // A reference points back into the values decoded so far; no RTMP publisher
        // sends one, and supporting it would let a small input expand into a large tree.
        marker::REFERENCE => return Err(Amf0Error::UnsupportedType(marker::REFERENCE)),
        // movie clip, record set, XML, typed object, AVM+ and anything
        // unknown: no RTMP publisher needs them, so refuse instead of guessing.
        other => return Err(Amf0Error::UnsupportedType(other)),
    };
    Ok(v)
}

fn enter(depth_left: usize) -> Result<usize, Amf0Error> {
    depth_left
        .checked_sub(1)
        .ok_or(Amf0Error::DepthExceeded(DEFAULT_MAX_DEPTH))
}

fn read_short_string(r: &mut Reader<'_>) -> Result<String, Amf0Error> {
    let len = r.u16_be().ok_or(Amf0Error::Truncated)?;
    let b = r.bytes(usize::from(len)).ok_or(Amf0Error::Truncated)?;
    Ok(String::from_utf8_lossy(b).into_owned())
}

/// Reads `key, value` pairs up to the `00 00 09` end marker. `lenient_end` accepts an
/// ECMA array that simply stops at the end of the input (some encoders omit the marker).
fn read_properties(
    r: &mut Reader<'_>,
    depth_left: usize,
    lenient_end: bool,
) -> Result<Vec<(String, Amf0Value)>, Amf0Error> {
    let mut props = Vec::new();
    loop {
        if lenient_end && r.remaining() == 0 {
            return Ok(props);
        }
        let key = read_short_string(r)?;
        if key.is_empty() && r.peek_u8() == Some(marker::OBJECT_END) {
            r.u8();
            return Ok(props);
        }
        let value = decode_value(r, depth_left)?;
        props.push((key, value));
    }
}

/// Encodes `values` one after the other (a command or data message body).
pub fn encode_all(values: &[Amf0Value], out: &mut impl BufMut) -> Result<(), Amf0Error> {
    for v in values {
        encode(v, out)?;
    }
    Ok(())
}

/// Encodes one value. Fails only for strings over 4 GiB or object keys over 64 KiB.
pub fn encode(value: &Amf0Value, out: &mut impl BufMut) -> Result<(), Amf0Error> {
    encode_depth(value, out, DEFAULT_MAX_DEPTH)
}

fn encode_depth(
    value: &Amf0Value,
    out: &mut impl BufMut,
    depth_left: usize,
) -> Result<(), Amf0Error> {
    match value {
        Amf0Value::Number(n) => {
            out.put_u8(marker::NUMBER);
            out.put_f64(*n);
        }
        Amf0Value::Boolean(b) => {
            out.put_u8(marker::BOOLEAN);
            out.put_u8(u8::from(*b));
        }
        Amf0Value::String(s) => match u16::try_from(s.len()) {
            Ok(len) => {
                out.put_u8(marker::STRING);
                out.put_u16(len);
                out.put_slice(s.as_bytes());
            }
            Err(_) => {
                let len = u32::try_from(s.len()).map_err(|_| Amf0Error::StringTooLong(s.len()))?;
                out.put_u8(marker::LONG_STRING);
                out.put_u32(len);
                out.put_slice(s.as_bytes());
            }
        },
        Amf0Value::Object(props) => {
            let depth = enter(depth_left)?;
            out.put_u8(marker::OBJECT);
            encode_properties(props, out, depth)?;
        }
        Amf0Value::Null => out.put_u8(marker::NULL),
        Amf0Value::Undefined => out.put_u8(marker::UNDEFINED),
        Amf0Value::EcmaArray(props) => {
            let depth = enter(depth_left)?;
            let count =
                u32::try_from(props.len()).map_err(|_| Amf0Error::ArrayTooLong(props.len()))?;
            out.put_u8(marker::ECMA_ARRAY);
            out.put_u32(count);
            encode_properties(props, out, depth)?;
        }
        Amf0Value::StrictArray(items) => {
            let depth = enter(depth_left)?;
            let count =
                u32::try_from(items.len()).map_err(|_| Amf0Error::ArrayTooLong(items.len()))?;
            out.put_u8(marker::STRICT_ARRAY);
            out.put_u32(count);
            for item in items {
                encode_depth(item, out, depth)?;
            }
        }
        Amf0Value::Date { millis, time_zone } => {
            out.put_u8(marker::DATE);
            out.put_f64(*millis);
            out.put_i16(*time_zone);
        }
    }
    Ok(())
}

fn encode_properties(
    props: &[(String, Amf0Value)],
    out: &mut impl BufMut,
    depth_left: usize,
) -> Result<(), Amf0Error> {
    for (key, value) in props {
        let len = u16::try_from(key.len()).map_err(|_| Amf0Error::StringTooLong(key.len()))?;
        out.put_u16(len);
        out.put_slice(key.as_bytes());
        encode_depth(value, out, depth_left)?;
    }
    out.put_slice(&[0, 0, marker::OBJECT_END]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(v: &Amf0Value) -> Amf0Value {
        let mut buf = Vec::new();
        encode(v, &mut buf).expect("encodes");
        let (back, used) = decode_one(&buf).expect("decodes");
        assert_eq!(used, buf.len());
        back
    }

    #[test]
    fn every_supported_type_roundtrips() {
        let values = vec![
            Amf0Value::Number(29.97),
            Amf0Value::Boolean(true),
            Amf0Value::Boolean(false),
            Amf0Value::string("héllo"),
            Amf0Value::String("x".repeat(70_000)),
            Amf0Value::Null,
            Amf0Value::Undefined,
            Amf0Value::object([
                ("app", Amf0Value::string("live")),
                ("n", Amf0Value::Number(1.0)),
            ]),
            Amf0Value::EcmaArray(vec![
                ("width".into(), Amf0Value::Number(1280.0)),
                ("nested".into(), Amf0Value::object([("a", Amf0Value::Null)])),
            ]),
            Amf0Value::StrictArray(vec![Amf0Value::Number(1.0), Amf0Value::string("two")]),
            Amf0Value::Date {
                millis: 1.7e12,
                time_zone: 0,
            },
            Amf0Value::Object(vec![]),
        ];
        for v in &values {
            assert_eq!(&roundtrip(v), v);
        }
        let mut buf = Vec::new();
        encode_all(&values, &mut buf).expect("encodes");
        assert_eq!(decode_all(&buf).expect("decodes"), values);
    }

    #[test]
    fn long_string_is_used_past_64k() {
        let mut buf = Vec::new();
        encode(&Amf0Value::String("y".repeat(65_536)), &mut buf).expect("encodes");
        assert_eq!(buf[0], marker::LONG_STRING);
    }

    #[test]
    fn known_bytes_decode() {
        // "connect", 1.0, {app: "live"} as ffmpeg sends it.
        let mut bytes = vec![0x02, 0x00, 0x07];
        bytes.extend_from_slice(b"connect");
        bytes.push(0x00);
        bytes.extend_from_slice(&1.0f64.to_be_bytes());
        bytes.extend_from_slice(&[0x03, 0x00, 0x03]);
        bytes.extend_from_slice(b"app");
        bytes.extend_from_slice(&[0x02, 0x00, 0x04]);
        bytes.extend_from_slice(b"live");
        bytes.extend_from_slice(&[0x00, 0x00, 0x09]);
        let v = decode_all(&bytes).expect("decodes");
        assert_eq!(v[0].as_str(), Some("connect"));
        assert_eq!(v[1].as_number(), Some(1.0));
        assert_eq!(v[2].get_str("app"), Some("live"));
    }

    #[test]
    fn ecma_array_without_end_marker_is_accepted() {
        let mut bytes = vec![0x08, 0, 0, 0, 1, 0x00, 0x01, b'w'];
        bytes.push(0x00);
        bytes.extend_from_slice(&640.0f64.to_be_bytes());
        let v = decode_all(&bytes).expect("lenient");
        assert_eq!(v[0].get("w"), Some(&Amf0Value::Number(640.0)));
    }

    #[test]
    fn references_and_unknown_types_are_refused() {
        assert_eq!(
            decode_all(&[0x07, 0x00, 0x01]),
            Err(Amf0Error::UnsupportedType(0x07))
        );
        assert_eq!(decode_all(&[0x11]), Err(Amf0Error::UnsupportedType(0x11)));
        assert_eq!(
            decode_all(&[0x10, 0, 0]),
            Err(Amf0Error::UnsupportedType(0x10))
        );
        assert_eq!(decode_all(&[0x09]), Err(Amf0Error::UnexpectedObjectEnd));
    }

    #[test]
    fn truncation_is_an_error_at_every_cut() {
        let mut buf = Vec::new();
        encode(
            &Amf0Value::object([
                ("a", Amf0Value::Number(1.0)),
                ("b", Amf0Value::StrictArray(vec![Amf0Value::Boolean(true)])),
                (
                    "c",
                    Amf0Value::Date {
                        millis: 0.0,
                        time_zone: 0,
                    },
                ),
            ]),
            &mut buf,
        )
        .expect("encodes");
        for cut in 0..buf.len() {
            assert!(decode_one(&buf[..cut]).is_err(), "cut at {cut} must fail");
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_stack_overflow() {
        let mut bytes = Vec::new();
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[0x03, 0x00, 0x01, b'k']);
        }
        assert_eq!(
            decode_all(&bytes),
            Err(Amf0Error::DepthExceeded(DEFAULT_MAX_DEPTH))
        );
        // A 20-deep structure is fine.
        let mut v = Amf0Value::Null;
        for _ in 0..20 {
            v = Amf0Value::object([("k", v)]);
        }
        assert_eq!(roundtrip(&v), v);
    }

    #[test]
    fn huge_array_claims_do_not_allocate() {
        // Strict array claiming 4 billion elements with 1 byte of content.
        assert_eq!(
            decode_all(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x05]),
            Err(Amf0Error::Truncated)
        );
        // Long string claiming 4 GiB.
        assert_eq!(
            decode_all(&[0x0c, 0xff, 0xff, 0xff, 0xff, b'a']),
            Err(Amf0Error::Truncated)
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (seed.rotate_left(i as u32 * 7) & 0x0f) as u8 ^ (i as u8 & 0x03))
                .collect();
            let _ = decode_all(&bytes);
        }
    }
}
