//! TPM 2.0 marshalling (big-endian integers, `TPM2B` = a 16-bit length and bytes) and the few
//! DER forms a TPM's answers are turned into. The reader never panics: a short answer is `None`.

/// A cursor over a TPM answer.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    /// A 16-bit integer.
    pub fn u16(&mut self) -> Option<u16> {
        let b = self.bytes(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A 32-bit integer.
    pub fn u32(&mut self) -> Option<u32> {
        let b = self.bytes(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `TPM2B`: a 16-bit length, then that many bytes.
    pub fn sized(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

/// A command being written.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A command header with `tag` and `code`; its size is filled in by [`Writer::finish`].
    pub fn command(tag: u16, code: u32) -> Writer {
        let mut w = Writer::default();
        w.u16(tag);
        w.u32(0);
        w.u32(code);
        w
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// A 16-bit integer.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// A 32-bit integer.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// A `TPM2B` (callers pass at most a few hundred bytes).
    pub fn sized(&mut self, v: &[u8]) {
        self.u16(u16::try_from(v.len()).unwrap_or(u16::MAX));
        self.buf.extend_from_slice(v);
    }

    /// The bytes written, for a structure that is not a command.
    pub fn finish_plain(self) -> Vec<u8> {
        self.buf
    }

    /// The command with its size field set.
    pub fn finish(mut self) -> Vec<u8> {
        let size = u32::try_from(self.buf.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        if let Some(field) = self.buf.get_mut(2..6) {
            field.copy_from_slice(&size);
        }
        self.buf
    }
}

/// A DER tag, length and content.
pub fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let len = n.to_be_bytes();
        let skip = len.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (len.len() - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A DER SEQUENCE of already encoded parts.
pub fn der_sequence(parts: &[Vec<u8>]) -> Vec<u8> {
    der_tlv(0x30, &parts.concat())
}

/// A DER INTEGER holding the unsigned big-endian `v`.
pub fn der_uint(v: &[u8]) -> Vec<u8> {
    let skip = v.iter().take_while(|&&b| b == 0).count();
    let v = &v[skip..];
    let mut content = Vec::with_capacity(v.len() + 1);
    if v.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(v);
    der_tlv(0x02, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_integers_are_minimal_and_unsigned() {
        assert_eq!(der_uint(&[0, 0, 0x7f]), [2, 1, 0x7f]);
        assert_eq!(der_uint(&[0x80]), [2, 2, 0, 0x80]);
        assert_eq!(der_uint(&[]), [2, 1, 0]);
        assert_eq!(der_tlv(4, &[0; 200])[..3], [4, 0x81, 200]);
        assert_eq!(der_tlv(4, &[0; 300])[..4], [4, 0x82, 1, 44]);
    }

    #[test]
    fn the_reader_stops_at_the_end() {
        let mut r = Reader::new(&[0, 3, 1, 2]);
        assert_eq!(r.sized(), None);
        let mut r = Reader::new(&[0, 2, 1, 2, 9]);
        assert_eq!(r.sized(), Some(&[1u8, 2][..]));
        assert_eq!(r.u16(), None);
        assert_eq!(r.rest(), [9]);
    }
}
