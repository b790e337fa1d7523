//! The offsets the memory reader uses, resolved once per target into plain numbers so the hot
//! loops don't look up strings. Version differences live in the offsets data, not here.

use crate::error::InspectError;
use crate::gobin::offsets::RuntimeOffsets;

/// Byte offset and width of one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: usize,
    pub size: usize,
}

impl Field {
    /// Read the field from a record read whole; None when the record is too short.
    pub fn read(&self, record: &[u8]) -> Option<u64> {
        let bytes = record.get(self.offset..self.offset + self.size)?;
        if let Ok(word) = <[u8; 8]>::try_from(bytes) {
            return Some(u64::from_le_bytes(word));
        }
        let mut word = [0u8; 8];
        word[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
        Some(u64::from_le_bytes(word))
    }
}

#[derive(Clone, Debug)]
pub struct GLayout {
    pub size: usize,
    pub stack_lo: Field,
    pub stack_hi: Field,
    pub sched_sp: Field,
    pub sched_pc: Field,
    pub sched_bp: Field,
    pub status: Field,
    pub goid: Field,
    pub waitsince: Option<Field>,
    pub waitreason: Field,
    pub waiting: Field,
    pub gopc: Field,
    pub startpc: Field,
    pub parent_goid: Option<Field>,
    pub tracking_seq: Option<Field>,
}

#[derive(Clone, Debug)]
pub struct SudogLayout {
    pub size: usize,
    pub g: Field,
    pub next: Field,
    pub prev: Field,
    pub elem: Field,
    pub c: Field,
    pub waitlink: Field,
    pub is_select: Field,
}

#[derive(Clone, Debug)]
pub struct HchanLayout {
    pub size: usize,
    pub qcount: Field,
    pub dataqsiz: Field,
    pub elemsize: Field,
    pub closed: Field,
    pub elemtype: Field,
    pub recvq_first: Field,
    pub sendq_first: Field,
}

#[derive(Clone, Debug)]
pub struct SemaRootLayout {
    pub treap: Field,
    /// Bytes from one semtable entry to the next (semaRoot padded to a cache line).
    pub stride: usize,
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub g: GLayout,
    pub sudog: SudogLayout,
    pub hchan: HchanLayout,
    pub sema_root: Option<SemaRootLayout>,
}

struct Resolver<'a>(&'a RuntimeOffsets);

impl Resolver<'_> {
    fn opt(&self, key: &str) -> Option<Field> {
        self.0.get(key).map(|f| Field {
            offset: f.value as usize,
            size: f.size as usize,
        })
    }

    fn req(&self, key: &str) -> Result<Field, InspectError> {
        self.opt(key).ok_or_else(|| {
            InspectError::MissingSymbol(format!(
                "offset of {key} (not in DWARF nor in the table for Go {})",
                self.0.release
            ))
        })
    }

    fn size(&self, key: &str) -> Result<usize, InspectError> {
        Ok(self.req(key)?.size)
    }
}

impl Layout {
    pub fn resolve(offsets: &RuntimeOffsets) -> Result<Layout, InspectError> {
        let r = Resolver(offsets);
        let waitq_first = r.opt("waitq.first").map_or(0, |f| f.offset);
        let queue = |key: &str| -> Result<Field, InspectError> {
            let q = r.req(key)?;
            Ok(Field {
                offset: q.offset + waitq_first,
                size: 8,
            })
        };
        Ok(Layout {
            g: GLayout {
                size: r.size("g.$size")?,
                stack_lo: r.req("g.stack.lo")?,
                stack_hi: r.req("g.stack.hi")?,
                sched_sp: r.req("g.sched.sp")?,
                sched_pc: r.req("g.sched.pc")?,
                sched_bp: r.req("g.sched.bp")?,
                status: r.req("g.atomicstatus")?,
                goid: r.req("g.goid")?,
                waitsince: r.opt("g.waitsince"),
                waitreason: r.req("g.waitreason")?,
                waiting: r.req("g.waiting")?,
                gopc: r.req("g.gopc")?,
                startpc: r.req("g.startpc")?,
                parent_goid: r.opt("g.parentGoid"),
                tracking_seq: r.opt("g.trackingSeq"),
            },
            sudog: SudogLayout {
                size: r.size("sudog.$size")?,
                g: r.req("sudog.g")?,
                next: r.req("sudog.next")?,
                prev: r.req("sudog.prev")?,
                elem: r.req("sudog.elem")?,
                c: r.req("sudog.c")?,
                waitlink: r.req("sudog.waitlink")?,
                is_select: r.req("sudog.isSelect")?,
            },
            hchan: HchanLayout {
                size: r.size("hchan.$size")?,
                qcount: r.req("hchan.qcount")?,
                dataqsiz: r.req("hchan.dataqsiz")?,
                elemsize: r.req("hchan.elemsize")?,
                closed: r.req("hchan.closed")?,
                elemtype: r.req("hchan.elemtype")?,
                recvq_first: queue("hchan.recvq")?,
                sendq_first: queue("hchan.sendq")?,
            },
            sema_root: r.opt("semaRoot.treap").map(|treap| SemaRootLayout {
                treap,
                // semTable entries are `struct { root semaRoot; pad [cpu.CacheLinePadSize -
                // unsafe.Sizeof(semaRoot{})]byte }`: one 64-byte line on amd64.
                stride: 64,
            }),
        })
    }
}
