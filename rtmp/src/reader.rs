//! A bounds-checked cursor over a byte slice.
//!
//! Every parser in this module reads untrusted bytes through this type so that a short or
//! malformed input shows up as `None` (→ "need more data" or a clear error, depending on
//! the caller) instead of a panic from slice indexing or an arithmetic underflow.

#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes, or `None` (and nothing consumed) if fewer are left.
    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    /// The next byte, without consuming it.
    pub(crate) fn peek_u8(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let b = self.peek_u8()?;
        self.pos += 1;
        Some(b)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let slice = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Some(out)
    }

    pub(crate) fn u16_be(&mut self) -> Option<u16> {
        self.array::<2>().map(u16::from_be_bytes)
    }

    pub(crate) fn u24_be(&mut self) -> Option<u32> {
        let [a, b, c] = self.array::<3>()?;
        Some(u32::from_be_bytes([0, a, b, c]))
    }

    pub(crate) fn u32_be(&mut self) -> Option<u32> {
        self.array::<4>().map(u32::from_be_bytes)
    }

    pub(crate) fn u32_le(&mut self) -> Option<u32> {
        self.array::<4>().map(u32::from_le_bytes)
    }

    pub(crate) fn i16_be(&mut self) -> Option<i16> {
        self.array::<2>().map(i16::from_be_bytes)
    }

    pub(crate) fn f64_be(&mut self) -> Option<f64> {
        self.array::<8>().map(f64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reads_return_none_and_consume_nothing() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32_be(), None);
        assert_eq!(r.position(), 0);
        assert_eq!(r.u24_be(), Some(0x010203));
        assert_eq!(r.u8(), None);
        assert_eq!(r.bytes(usize::MAX), None);
        assert_eq!(r.remaining(), 0);
    }
}
