//! Kernel BTF reader: struct field offsets for the kernel programs.
//!
//! Rust eBPF programs get no CO-RE relocations, so the agent reads the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`) at start-up and computes the byte offsets itself. Only the parts of
//! BTF needed for that are kept: every type's header, struct/union members, array shapes and int
//! encodings. Format: kernel `Documentation/bpf/btf.rst`; native little-endian only.
//!
//! Why our own reader (about 490 lines, the rest tests) rather than a crate, checked 2026-12:
//! - aya-obj's `btf::Btf` (already linked, through aya) parses vmlinux but keeps struct members
//!   and their offsets crate-private: it cannot answer "offset of `task_struct.files`", the
//!   one question asked here.
//! - btf-rs 2.0.0 (retis) can: types by name, members, bit offsets. But it is
//!   LGPL-2.1-or-later; linked statically into this Apache-2.0 binary it brings the LGPL's
//!   relinking terms to everyone who ships the agent. Not worth it for ~400 lines.
//! - libbpf-rs wraps the C libbpf: a C toolchain, libelf and zlib at build time and FFI for
//!   one lookup per field at start-up.
//!
//! What this reader does that they would also have to: bounded walks (a malformed or cyclic
//! blob is an error, never a hang: `MAX_HOPS`), every read bounds-checked (the
//! `bad_input_is_an_error_not_a_panic` test cuts a blob at every byte), errors that name the
//! struct and field, and only type headers, members and strings kept (not every kind's
//! payload). Revisit if aya exposes members or a permissively licensed BTF crate appears.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llmwatch_common::offsets::{MISSING, Offsets};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("kernel BTF has no struct or union `{name}`")]
    NoStruct { name: String },
    #[error("struct {strukt} has no field `{field}`")]
    NoField { strukt: String, field: String },
    #[error("field `{field}` of struct {strukt} is a bitfield and has no byte offset")]
    Bitfield { strukt: String, field: String },
    #[error("field `{field}` of struct {strukt} is not a struct or union; cannot descend into it")]
    NotAggregate { strukt: String, field: String },
}

fn malformed(msg: impl Into<String>) -> BtfError {
    BtfError::Malformed(msg.into())
}

const INT: u8 = 1;
const PTR: u8 = 2;
const ARRAY: u8 = 3;
const STRUCT: u8 = 4;
const UNION: u8 = 5;
const ENUM: u8 = 6;
const TYPEDEF: u8 = 8;
const FUNC_PROTO: u8 = 13;
const VOLATILE: u8 = 9;
const CONST: u8 = 10;
const RESTRICT: u8 = 11;
const FLOAT: u8 = 16;
const TYPE_TAG: u8 = 18;
const ENUM64: u8 = 19;

/// Prefix of the typedef the kernel declares for each tracepoint's probe prototype.
const TRACEPOINT_TYPEDEF: &str = "btf_trace_";

/// Bound on typedef/modifier chains, array nesting and anonymous-member nesting. Real kernels
/// need a handful; the limit only exists so a cyclic (malformed) blob errors instead of hanging
/// or overflowing the stack.
const MAX_HOPS: usize = 64;

#[derive(Clone, Copy, Default)]
struct Type {
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    size_or_type: u32,
    /// STRUCT/UNION: index of the first member in `KernelBtf::members`; ARRAY: element type id;
    /// INT: the encoding word (bit offset in bits 16..24, bit count in bits 0..8).
    a: u32,
    /// STRUCT/UNION: member count; ARRAY: element count.
    b: u32,
}

#[derive(Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Raw BTF offset word: bits, or with the parent's kind_flag, bitfield size << 24 | bits.
    offset: u32,
}

/// A member found by name: bit offset from the start of the searched struct.
struct Found {
    bits: u64,
    type_id: u32,
    bitfield: bool,
}

pub struct KernelBtf {
    /// Indexed by type id; id 0 is `void` (a placeholder entry).
    types: Vec<Type>,
    members: Vec<Member>,
    strings: Vec<u8>,
    /// Struct/union name -> first type id with that name. FWD declarations are never indexed,
    /// so a full definition always wins over a forward one.
    by_name: HashMap<String, u32>,
    /// Typedef name -> type id, for the `btf_trace_<tracepoint>` typedefs only (what
    /// `tracepoint_arity` looks up; the kernel has tens of thousands of other typedefs).
    tracepoints: HashMap<String, u32>,
}

impl std::fmt::Debug for KernelBtf {
    // Summarise: the full type table is far too large to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelBtf")
            .field("types", &(self.types.len() - 1))
            .field("named_aggregates", &self.by_name.len())
            .finish()
    }
}

fn le32(b: &[u8], i: usize) -> u32 {
    // Callers pass slices they have already length-checked; the fallback keeps this panic-free.
    b.get(i..i + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn section<'a>(body: &'a [u8], off: u32, len: u32, what: &str) -> Result<&'a [u8], BtfError> {
    let start = off as usize;
    start
        .checked_add(len as usize)
        .and_then(|end| body.get(start..end))
        .ok_or_else(|| malformed(format!("{what} section {off}+{len} out of bounds")))
}

impl KernelBtf {
    pub const SYSFS_PATH: &'static str = "/sys/kernel/btf/vmlinux";

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&data)
    }

    pub fn from_bytes(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 {
            return Err(malformed("shorter than the BTF header"));
        }
        match (data[0], data[1]) {
            (0x9f, 0xeb) => {}
            (0xeb, 0x9f) => return Err(malformed("big-endian BTF is not supported")),
            (a, b) => return Err(malformed(format!("bad magic {a:#04x}{b:02x}"))),
        }
        if data[2] != 1 {
            return Err(malformed(format!("unsupported BTF version {}", data[2])));
        }
        // Offsets are relative to the end of the header, whose length newer kernels may grow.
        let hdr_len = le32(data, 4) as usize;
        let body = data
            .get(hdr_len..)
            .filter(|_| hdr_len >= 24)
            .ok_or_else(|| malformed(format!("bad header length {hdr_len}")))?;
        let type_sec = section(body, le32(data, 8), le32(data, 12), "type")?;
        let strings = section(body, le32(data, 16), le32(data, 20), "string")?.to_vec();
        let str_len = strings.len();
        let check_name = |off: u32, id: usize| {
            if (off as usize) < str_len || off == 0 {
                Ok(())
            } else {
                Err(malformed(format!("type {id}: name offset {off} out of bounds")))
            }
        };

        let mut types = vec![Type::default()];
        let mut members = Vec::new();
        let mut pos = 0usize;
        while pos < type_sec.len() {
            let id = types.len();
            let hdr = type_sec
                .get(pos..pos + 12)
                .ok_or_else(|| malformed(format!("type {id}: truncated header")))?;
            let (name_off, info, size_or_type) = (le32(hdr, 0), le32(hdr, 4), le32(hdr, 8));
            check_name(name_off, id)?;
            let vlen = (info & 0xffff) as usize;
            let kind = ((info >> 24) & 0x1f) as u8;
            pos += 12;
            // Every kind's trailing data must be skipped, even kinds we never look at.
            let extra_len = match kind {
                INT | 14 | 17 => 4, // INT encoding, VAR linkage, DECL_TAG component_idx
                ARRAY => 12,
                STRUCT | UNION | 15 | ENUM64 => vlen * 12, // members, DATASEC vars, enum64 values
                ENUM | FUNC_PROTO => vlen * 8,             // enum values, FUNC_PROTO params
                PTR | 7 | TYPEDEF | VOLATILE | CONST | RESTRICT | 12 | FLOAT | TYPE_TAG => 0,
                k => return Err(malformed(format!("type {id}: unknown kind {k}"))),
            };
            let extra = type_sec
                .get(pos..pos + extra_len)
                .ok_or_else(|| malformed(format!("type {id}: truncated trailing data")))?;
            pos += extra_len;
            let (a, b) = match kind {
                INT => (le32(extra, 0), 0),
                ARRAY => (le32(extra, 0), le32(extra, 8)),
                STRUCT | UNION => {
                    let first = members.len() as u32;
                    for m in extra.chunks_exact(12) {
                        let name_off = le32(m, 0);
                        check_name(name_off, id)?;
                        members.push(Member {
                            name_off,
                            type_id: le32(m, 4),
                            offset: le32(m, 8),
                        });
                    }
                    (first, vlen as u32)
                }
                FUNC_PROTO => (0, vlen as u32),
                _ => (0, 0),
            };
            types.push(Type {
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                size_or_type,
                a,
                b,
            });
        }

        let mut btf = KernelBtf {
            types,
            members,
            strings,
            by_name: HashMap::new(),
            tracepoints: HashMap::new(),
        };
        let mut by_name = HashMap::new();
        let mut tracepoints = HashMap::new();
        for (id, t) in btf.types.iter().enumerate() {
            let name = btf.name(t.name_off);
            if matches!(t.kind, STRUCT | UNION) && !name.is_empty() && !by_name.contains_key(name) {
                by_name.insert(name.to_owned(), id as u32);
            }
            if t.kind == TYPEDEF
                && let Some(tp) = name.strip_prefix(TRACEPOINT_TYPEDEF)
            {
                tracepoints.insert(tp.to_owned(), id as u32);
            }
        }
        btf.by_name = by_name;
        btf.tracepoints = tracepoints;
        Ok(btf)
    }

    /// Name at a string-table offset; "" for anonymous (offset 0) or unreadable names.
    fn name(&self, off: u32) -> &str {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or_default()
    }

    fn ty(&self, id: u32) -> Result<&Type, BtfError> {
        self.types
            .get(id as usize)
            .ok_or_else(|| malformed(format!("type id {id} out of range")))
    }

    /// Follow typedef/const/volatile/restrict/type_tag to the underlying type id.
    fn skip_mods(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_HOPS {
            let t = self.ty(id)?;
            if !matches!(t.kind, TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG) {
                return Ok(id);
            }
            id = t.size_or_type;
        }
        Err(malformed(format!("modifier chain at type {id} too long")))
    }

    fn type_size(&self, mut id: u32) -> Result<u32, BtfError> {
        let mut mult: u32 = 1;
        for _ in 0..MAX_HOPS {
            id = self.skip_mods(id)?;
            let t = self.ty(id)?;
            let size = match t.kind {
                INT | STRUCT | UNION | ENUM | ENUM64 | FLOAT => t.size_or_type,
                // BTF does not record pointer width; the agent runs on the kernel it inspects.
                PTR => std::mem::size_of::<usize>() as u32,
                ARRAY => {
                    mult = mult
                        .checked_mul(t.b)
                        .ok_or_else(|| malformed("array size overflows"))?;
                    id = t.a;
                    continue;
                }
                k => return Err(malformed(format!("type id {id} (kind {k}) has no size"))),
            };
            return size
                .checked_mul(mult)
                .ok_or_else(|| malformed("array size overflows"));
        }
        Err(malformed(format!("array nesting at type {id} too deep")))
    }

    fn is_aggregate(&self, id: u32) -> Result<bool, BtfError> {
        Ok(matches!(self.ty(id)?.kind, STRUCT | UNION))
    }

    /// Find `name` among the members of struct/union `id`, descending into anonymous
    /// struct/union members (how C flattens them) and adding their offsets.
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Result<Option<Found>, BtfError> {
        if depth > MAX_HOPS {
            return Err(malformed(format!("anonymous members too deep at type {id}")));
        }
        let parent = *self.ty(id)?;
        let range = parent.a as usize..parent.a as usize + parent.b as usize;
        let members = self
            .members
            .get(range)
            .ok_or_else(|| malformed("member range out of bounds"))?;
        for m in members {
            // With kind_flag the offset word also carries the bitfield width in its top byte.
            let (bits, width) = if parent.kind_flag {
                (m.offset & 0xff_ffff, m.offset >> 24)
            } else {
                (m.offset, 0)
            };
            let mname = self.name(m.name_off);
            if mname == name {
                let mut bitfield = width != 0 || bits % 8 != 0;
                // Without kind_flag, bitfields are encoded in the member's INT type instead.
                let t = self.ty(self.skip_mods(m.type_id)?)?;
                if !parent.kind_flag && t.kind == INT {
                    let (int_off, nr_bits) = ((t.a >> 16) & 0xff, t.a & 0xff);
                    bitfield |= int_off != 0 || u64::from(nr_bits) != u64::from(t.size_or_type) * 8;
                }
                return Ok(Some(Found {
                    bits: bits.into(),
                    type_id: m.type_id,
                    bitfield,
                }));
            }
            if mname.is_empty() {
                let inner = self.skip_mods(m.type_id)?;
                if self.is_aggregate(inner)?
                    && let Some(mut f) = self.find_member(inner, name, depth + 1)?
                {
                    f.bits += u64::from(bits);
                    return Ok(Some(f));
                }
            }
        }
        Ok(None)
    }

    /// Walk a dotted member path; returns (bit offset, member type id).
    fn walk(&self, strukt: &str, field: &str) -> Result<(u64, u32), BtfError> {
        let (s, f) = (|| strukt.to_owned(), || field.to_owned());
        let no_field = || BtfError::NoField {
            strukt: s(),
            field: f(),
        };
        let no_struct = || BtfError::NoStruct { name: s() };
        let mut id = *self.by_name.get(strukt).ok_or_else(no_struct)?;
        // An empty segment would otherwise match the first anonymous member.
        if field.split('.').any(str::is_empty) {
            return Err(no_field());
        }
        let mut bits = 0u64;
        let mut done = 0usize; // byte length of the path walked so far, for error messages
        for seg in field.split('.') {
            let so_far = &field[..done.saturating_sub(1)];
            id = self.skip_mods(id)?;
            if !self.is_aggregate(id)? {
                return Err(BtfError::NotAggregate {
                    strukt: s(),
                    field: so_far.into(),
                });
            }
            let found = self.find_member(id, seg, 0)?.ok_or_else(no_field)?;
            if found.bitfield {
                return Err(BtfError::Bitfield {
                    strukt: s(),
                    field: f(),
                });
            }
            bits += found.bits;
            id = found.type_id;
            done += seg.len() + 1;
        }
        Ok((bits, id))
    }

    /// Byte offset of `field` within struct/union `strukt`. `field` may be a dotted path through
    /// named members ("__sk_common.skc_family"); members of anonymous struct/union members are
    /// searched recursively at each step. Bitfield members are an error.
    pub fn member_offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let (bits, _) = self.walk(strukt, field)?;
        u32::try_from(bits / 8).map_err(|_| malformed(format!("offset of {strukt}.{field} overflows")))
    }

    /// Number of arguments tracepoint `name` passes to a raw tracepoint program, or None when
    /// this kernel has no such tracepoint. Read from the `btf_trace_<name>` typedef (a pointer
    /// to the probe's prototype, whose first parameter is the probe's private data).
    pub fn tracepoint_arity(&self, name: &str) -> Option<usize> {
        let id = *self.tracepoints.get(name)?;
        let ptr = self.skip_mods(id).ok()?;
        let ptr = self.ty(ptr).ok().filter(|t| t.kind == PTR)?;
        let proto = self.skip_mods(ptr.size_or_type).ok()?;
        let proto = self.ty(proto).ok().filter(|t| t.kind == FUNC_PROTO)?;
        Some((proto.b as usize).saturating_sub(1))
    }

    /// Byte size of the member's type, through typedef/const/volatile/restrict/type_tag.
    pub fn member_size(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let (_, id) = self.walk(strukt, field)?;
        self.type_size(id)
    }
}

/// Offsets for the programs. A missing required field is an error; the optional io_uring and
/// page-fault ones become [`MISSING`] when the kernel lacks the struct or field, and their `Offsets` field names
/// are returned so the caller can say what is disabled. Other errors (e.g. a field turning into a
/// bitfield) always propagate: the layout is not what the programs expect.
pub fn resolve_offsets(btf: &KernelBtf) -> Result<(Offsets, Vec<&'static str>), BtfError> {
    let f = |s: &str, m: &str| btf.member_offset(s, m);
    let mut o = Offsets::missing();
    o.regs_di = f("pt_regs", "di")?;
    o.regs_si = f("pt_regs", "si")?;
    o.regs_dx = f("pt_regs", "dx")?;
    o.regs_r10 = f("pt_regs", "r10")?;
    o.regs_r8 = f("pt_regs", "r8")?;
    o.regs_r9 = f("pt_regs", "r9")?;
    o.regs_orig_ax = f("pt_regs", "orig_ax")?;
    o.task_pid = f("task_struct", "pid")?;
    o.task_tgid = f("task_struct", "tgid")?;
    o.task_real_parent = f("task_struct", "real_parent")?;
    o.task_files = f("task_struct", "files")?;
    o.task_mm = f("task_struct", "mm")?;
    o.task_exit_code = f("task_struct", "exit_code")?;
    o.task_children = f("task_struct", "children")?;
    o.task_sibling = f("task_struct", "sibling")?;
    o.task_signal = f("task_struct", "signal")?;
    o.signal_leader = f("signal_struct", "leader")?;
    o.mapping_host = f("address_space", "host")?;
    o.files_fdt = f("files_struct", "fdt")?;
    o.fdt_max_fds = f("fdtable", "max_fds")?;
    o.fdt_fd = f("fdtable", "fd")?;
    o.file_inode = f("file", "f_inode")?;
    o.file_flags = f("file", "f_flags")?;
    o.file_private_data = f("file", "private_data")?;
    o.inode_mode = f("inode", "i_mode")?;
    o.inode_ino = f("inode", "i_ino")?;
    o.inode_sb = f("inode", "i_sb")?;
    o.inode_rdev = f("inode", "i_rdev")?;
    o.inode_size = f("inode", "i_size")?;
    o.sb_dev = f("super_block", "s_dev")?;
    o.socket_type = f("socket", "type")?;
    o.socket_sk = f("socket", "sk")?;
    o.sk_family = f("sock", "__sk_common.skc_family")?;
    o.sk_daddr = f("sock", "__sk_common.skc_daddr")?;
    o.sk_rcv_saddr = f("sock", "__sk_common.skc_rcv_saddr")?;
    o.sk_dport = f("sock", "__sk_common.skc_dport")?;
    o.sk_num = f("sock", "__sk_common.skc_num")?;
    o.sk_v6_daddr = f("sock", "__sk_common.skc_v6_daddr")?;
    o.sk_protocol = f("sock", "sk_protocol")?;
    o.mm_arg_start = f("mm_struct", "arg_start")?;
    o.mm_arg_end = f("mm_struct", "arg_end")?;
    o.bprm_filename = f("linux_binprm", "filename")?;
    o.sb_magic = f("super_block", "s_magic")?;
    o.file_dentry = f("file", "f_path.dentry")?;
    o.dentry_name = f("dentry", "d_name.name")?;
    o.dentry_parent = f("dentry", "d_parent")?;

    let mut missing = Vec::new();
    let optional: [(&mut u32, &str, &str, &'static str); 8] = [
        (&mut o.req_file, "io_kiocb", "file", "req_file"),
        (&mut o.req_opcode, "io_kiocb", "opcode", "req_opcode"),
        (&mut o.cqe_res, "io_uring_cqe", "res", "cqe_res"),
        (&mut o.vmf_vma, "vm_fault", "vma", "vmf_vma"),
        (&mut o.vmf_pgoff, "vm_fault", "pgoff", "vmf_pgoff"),
        (&mut o.vma_file, "vm_area_struct", "vm_file", "vma_file"),
        (&mut o.file_mapping, "file", "f_mapping", "file_mapping"),
        (&mut o.mm_exe_file, "mm_struct", "exe_file", "mm_exe_file"),
    ];
    for (slot, s, m, name) in optional {
        *slot = match f(s, m) {
            Ok(off) => off,
            Err(BtfError::NoStruct { .. } | BtfError::NoField { .. }) => {
                missing.push(name);
                MISSING
            }
            Err(e) => return Err(e),
        };
    }
    Ok((o, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a little-endian BTF blob by hand; `add` returns the new type's id.
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strs: Vec<u8>, // without the leading NUL, which `build` prepends
        count: u32,
    }

    const KF: u32 = 1 << 31; // kind_flag

    fn k(kind: u8) -> u32 {
        u32::from(kind) << 24
    }

    impl Builder {
        fn add(&mut self, name: &str, info: u32, size_or_type: u32, extra: &[u32]) -> u32 {
            let name_off = self.str(name);
            for w in [name_off, info, size_or_type].iter().chain(extra) {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.count += 1;
            self.count
        }
        /// Members as (name, type, offset word).
        fn agg(&mut self, info: u32, name: &str, size: u32, ms: &[(&str, u32, u32)]) -> u32 {
            let extra: Vec<u32> = ms.iter().flat_map(|&(n, t, o)| [self.str(n), t, o]).collect();
            self.add(name, info | ms.len() as u32, size, &extra)
        }
        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            self.strs.extend_from_slice(s.as_bytes());
            self.strs.push(0);
            (self.strs.len() - s.len()) as u32 // +1 for the leading NUL, -1 for ours
        }
        fn build(&self) -> Vec<u8> {
            let mut out = vec![0x9f, 0xeb, 1, 0];
            let (tl, sl) = (self.types.len() as u32, self.strs.len() as u32 + 1);
            for w in [24, 0, tl, tl, sl] {
                out.extend_from_slice(&u32::to_le_bytes(w));
            }
            out.extend_from_slice(&self.types);
            out.push(0);
            out.extend_from_slice(&self.strs);
            out
        }
    }

    fn synthetic() -> Vec<u8> {
        let mut b = Builder::default();
        b.add("outer", k(7), 0, &[]); // FWD first: the definition must still win
        let int = b.add("int", k(INT), 4, &[32]);
        let uchar = b.add("unsigned char", k(INT), 1, &[8]);
        let u3 = b.add("u3", k(INT), 4, &[3]); // old-style bitfield, encoded in the INT type
        b.add("", k(13) | 1, int, &[0, int]); // FUNC_PROTO and ENUM, only to be skipped
        b.add("e", k(ENUM) | 2, 4, &[0, 0, 0, 1]);
        let inner = b.agg(k(STRUCT), "inner", 8, &[("a", int, 0), ("b", int, 32)]);
        let inner_t = b.add("inner_t", k(TYPEDEF), inner, &[]);
        let c_inner_t = b.add("", k(CONST), inner_t, &[]);
        let anon_s = b.agg(k(STRUCT), "", 8, &[("x", int, 0), ("y", int, 32)]);
        let anon_u = b.agg(k(UNION), "", 8, &[("", anon_s, 0), ("z", int, 0)]);
        let arr = b.add("", k(ARRAY), 0, &[uchar, int, 6]);
        let ptr = b.add("", k(PTR), 0, &[]); // void *
        b.agg(k(STRUCT), "legacy", 4, &[("bits", u3, 0)]);
        #[rustfmt::skip]
        b.agg(k(STRUCT) | KF, "outer", 48, &[
            ("head", int, 0), ("", anon_u, 32), ("nested", c_inner_t, 96),
            ("flags", int, (3 << 24) | 160), ("more", int, (5 << 24) | 163),
            ("tail", uchar, 168), ("next", ptr, 192), ("name", arr, 256),
        ]);
        b.build()
    }

    #[test]
    fn synthetic_offsets_and_errors() {
        let btf = KernelBtf::from_bytes(&synthetic()).unwrap();
        let off = |f| btf.member_offset("outer", f).unwrap();
        assert_eq!(off("head"), 0);
        assert_eq!(off("x"), 4, "anonymous union > anonymous struct");
        assert_eq!(off("y"), 8);
        assert_eq!(off("z"), 4);
        assert_eq!(off("nested"), 12);
        assert_eq!(off("nested.b"), 16, "dotted path through const typedef");
        assert_eq!(off("tail"), 21);
        assert_eq!(off("name"), 32);
        let size = |f| btf.member_size("outer", f).unwrap();
        assert_eq!(size("nested"), 8);
        assert_eq!(size("nested.a"), 4);
        assert_eq!(size("tail"), 1);
        assert_eq!(size("next"), 8);
        assert_eq!(size("name"), 6);
        assert_eq!(btf.member_offset("inner", "b").unwrap(), 4);

        let err = |s, f| btf.member_offset(s, f).unwrap_err();
        for (s, f) in [("outer", "flags"), ("outer", "more"), ("legacy", "bits")] {
            assert!(matches!(err(s, f), BtfError::Bitfield { .. }), "{f}");
        }
        let msg = |s, f| err(s, f).to_string();
        assert_eq!(msg("outer", "nope"), "struct outer has no field `nope`");
        assert_eq!(msg("outer", "nested.zz"), "struct outer has no field `nested.zz`");
        for f in ["", "nested.", ".x", "head..x"] {
            assert!(matches!(err("outer", f), BtfError::NoField { .. }), "{f:?}");
        }
        let e = err("outer", "head.x");
        assert!(
            matches!(&e, BtfError::NotAggregate { field, .. } if field == "head"),
            "{e}"
        );
        assert_eq!(msg("nosuch", "x"), "kernel BTF has no struct or union `nosuch`");
        assert!(matches!(err("inner_t", "a"), BtfError::NoStruct { .. }));
    }

    #[test]
    fn tracepoint_arity_from_the_probe_typedef() {
        let mut b = Builder::default();
        let int = b.add("int", k(INT), 4, &[32]);
        let proto = b.add("", k(FUNC_PROTO) | 3, 0, &[0, int, 0, int, 0, int]);
        let ptr = b.add("", k(PTR), proto, &[]);
        b.add("btf_trace_three", k(TYPEDEF), ptr, &[]);
        b.add("not_a_tracepoint", k(TYPEDEF), ptr, &[]);
        // A typedef named like one but not a pointer to a prototype.
        b.add("btf_trace_odd", k(TYPEDEF), int, &[]);
        let btf = KernelBtf::from_bytes(&b.build()).unwrap();
        assert_eq!(btf.tracepoint_arity("three"), Some(2));
        assert_eq!(btf.tracepoint_arity("not_a_tracepoint"), None);
        assert_eq!(btf.tracepoint_arity("odd"), None);
        assert_eq!(btf.tracepoint_arity("missing"), None);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let blob = synthetic();
        for n in 0..blob.len() {
            assert!(KernelBtf::from_bytes(&blob[..n]).is_err(), "cut at {n}");
        }
        let mut be = blob.clone();
        be.swap(0, 1);
        let e = KernelBtf::from_bytes(&be).unwrap_err();
        assert!(e.to_string().contains("big-endian"), "{e}");
        // Corrupt single bytes and random garbage: whatever parses must answer without panicking.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..blob.len() * 8 {
            let mut m = blob.clone();
            m[i % blob.len()] = rnd() as u8;
            if let Ok(btf) = KernelBtf::from_bytes(&m) {
                for f in ["x", "nested.b", "name", "next", "flags"] {
                    let _ = btf.member_offset("outer", f);
                    let _ = btf.member_size("outer", f);
                }
            }
            let garbage: Vec<u8> = (0..64).map(|_| rnd() as u8).collect();
            let _ = KernelBtf::from_bytes(&garbage);
        }
    }

    #[test]
    fn cycles_error_out() {
        let mut b = Builder::default();
        // id 1: typedef to itself; id 2: struct whose anonymous member is itself.
        b.add("loop_t", k(TYPEDEF), 1, &[]);
        b.agg(k(STRUCT), "selfish", 4, &[("", 2, 0), ("t", 1, 0)]);
        let btf = KernelBtf::from_bytes(&b.build()).unwrap();
        let e = btf.member_offset("selfish", "nope").unwrap_err();
        assert!(matches!(e, BtfError::Malformed(_)), "{e}");
    }

    #[test]
    fn vmlinux() {
        let path = Path::new(KernelBtf::SYSFS_PATH);
        // The agent's supported hosts have BTF; a host without it would pass nothing here.
        assert!(
            path.exists(),
            "{} not present: this test needs the running kernel's BTF",
            path.display()
        );
        let btf = KernelBtf::from_file(path).unwrap();
        let (o, missing) = resolve_offsets(&btf).unwrap();
        eprintln!("optional fields missing on this kernel: {missing:?}");
        // x86_64 ptrace ABI (struct pt_regs layout is fixed).
        let regs = [o.regs_r10, o.regs_r9, o.regs_r8, o.regs_dx, o.regs_si, o.regs_di];
        assert_eq!(regs, [56, 64, 72, 96, 104, 112]);
        assert_eq!(o.regs_orig_ax, 120);
        // What the agent uses when it has no BTF must be what BTF says.
        let abi = Offsets::syscall_abi_only();
        let abi_regs = [
            abi.regs_r10,
            abi.regs_r9,
            abi.regs_r8,
            abi.regs_dx,
            abi.regs_si,
            abi.regs_di,
        ];
        assert_eq!((abi_regs, abi.regs_orig_ax), (regs, o.regs_orig_ax));
        assert_eq!(abi.task_pid, MISSING);
        assert_eq!(o.task_tgid, o.task_pid + 4);
        let size = |s, f| btf.member_size(s, f).unwrap();
        assert_eq!(size("task_struct", "pid"), 4);
        assert_eq!(size("inode", "i_ino"), 8);
        assert_eq!(size("super_block", "s_dev"), 4);
        assert_eq!(size("sock", "__sk_common.skc_v6_daddr"), 16);
        assert_eq!((o.sk_family, o.sk_daddr, o.sk_rcv_saddr), (16, 0, 4));
        assert_eq!(o.mm_arg_end, o.mm_arg_start + 8);
        // Tracepoint prototypes (the probe's private-data argument is not counted).
        assert_eq!(btf.tracepoint_arity("sched_process_fork"), Some(2));
        assert_eq!(btf.tracepoint_arity("sys_exit"), Some(2));
        assert_eq!(btf.tracepoint_arity("no_such_tracepoint"), None);
        let uring = btf.tracepoint_arity("io_uring_complete");
        assert!(
            matches!(uring, Some(3) | Some(7)),
            "io_uring_complete takes {uring:?} arguments"
        );

        let groups: [&[u32]; 13] = [
            &[
                o.regs_r10,
                o.regs_r9,
                o.regs_r8,
                o.regs_dx,
                o.regs_si,
                o.regs_di,
                o.regs_orig_ax,
            ],
            &[
                o.task_pid,
                o.task_tgid,
                o.task_real_parent,
                o.task_files,
                o.task_mm,
                o.task_exit_code,
                o.task_children,
                o.task_sibling,
                o.task_signal,
            ],
            &[o.signal_leader],
            &[o.mapping_host],
            &[o.files_fdt],
            &[o.fdt_max_fds, o.fdt_fd],
            &[o.file_inode, o.file_flags, o.file_private_data],
            &[o.inode_mode, o.inode_ino, o.inode_sb, o.inode_rdev, o.inode_size],
            &[o.sb_dev],
            &[o.socket_type, o.socket_sk],
            &[
                o.sk_family,
                o.sk_daddr,
                o.sk_rcv_saddr,
                o.sk_dport,
                o.sk_num,
                o.sk_v6_daddr,
                o.sk_protocol,
            ],
            &[o.mm_arg_start, o.mm_arg_end],
            &[o.bprm_filename],
        ];
        for g in groups {
            let mut v = g.to_vec();
            v.sort_unstable();
            v.dedup();
            assert_eq!(v.len(), g.len(), "duplicate offsets in {g:?}");
            assert!(!g.contains(&MISSING), "{g:?}");
        }
    }
}
