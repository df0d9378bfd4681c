//! The protobuf wire format, read without a schema: tags, varints, fixed-width values
//! and length-delimited runs. Every read is bounds-checked: a truncated or hostile body
//! is an error, never a panic.

use super::{ProtoError, err};

#[derive(Debug, Clone, Copy)]
pub(super) enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    /// Kubernetes messages have no 32-bit fixed fields: skipped.
    Fixed32,
    Bytes(&'a [u8]),
}

pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| err("truncated protobuf varint"))?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(err("protobuf varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(err("protobuf varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| err("truncated protobuf field"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn fixed64(&mut self) -> Result<u64, ProtoError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn fixed32(&mut self) -> Result<u32, ProtoError> {
        let b = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    }

    /// The next field: its number and value; `None` at the end.
    pub fn next(&mut self) -> Result<Option<(u64, WireValue<'a>)>, ProtoError> {
        if self.at_end() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let number = tag >> 3;
        if number == 0 {
            return Err(err("protobuf field number 0"));
        }
        let value = match tag & 7 {
            0 => WireValue::Varint(self.varint()?),
            1 => WireValue::Fixed64(self.fixed64()?),
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| err("protobuf length too large"))?;
                WireValue::Bytes(self.take(len)?)
            }
            5 => {
                self.fixed32()?;
                WireValue::Fixed32
            }
            other => return Err(err(format!("unsupported protobuf wire type {other}"))),
        };
        Ok(Some((number, value)))
    }
}
