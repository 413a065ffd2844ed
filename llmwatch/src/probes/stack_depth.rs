//! Linux 6.1's limit on the combined stack of a BPF-to-BPF call chain, checked on the host
//! against the object the agent embeds.
//!
//! Why: 6.1's verifier (`check_max_stack_depth()` in kernel/bpf/verifier.c) walks every call
//! chain from a program's entry, adds up each function's stack rounded up to 32 bytes (the
//! interpreter's stack granularity; a function with no stack still counts 32) and refuses the
//! program once a chain passes 512 bytes ("combined stack size of 2 calls is 576. Too
//! large"). Global functions (`#[no_mangle] #[inline(never)] extern "C"`, BTF_FUNC_GLOBAL) are
//! verified on their own, but in 6.1 they are still frames of that walk. Later kernels round
//! to 16 bytes under the JIT and give the large frames of tracing programs a stack of their
//! own, so this host's kernel loads objects 6.1 refuses and only the slow 6.1 VM
//! (`cargo xtask vm-test`) used to notice. The test below makes `cargo test` notice.
//!
//! What is checked is what aya hands the kernel: each program after aya-obj has linked its
//! callees in behind it (`Object::relocate_calls`, as `EbpfLoader::load` does), split into
//! functions at the targets of its calls the way the kernel splits it. A function's frame is
//! the deepest `r10 - N` it reaches: loads and stores through r10, and through registers
//! holding r10 plus a constant (`r1 = r10; r1 += -N`: a buffer on its stack handed to a
//! helper or a callee). The verifier records the deepest slot a path actually touches, which
//! for LLVM's code is the same number; the test reproduces the figures of 6.1's refusals.
//! Not modelled: bpf_timer callbacks (6.1 leaves them out of the walk; this would count
//! them) and the 256-byte limit on frames below a tail call (the object makes neither).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
};

use aya_obj::generated::{
    BPF_ADD, BPF_ALU, BPF_ALU64, BPF_ATOMIC, BPF_CALL, BPF_DW, BPF_IMM, BPF_JMP, BPF_K, BPF_LD, BPF_LDX,
    BPF_MOV, BPF_PSEUDO_CALL, BPF_PSEUDO_FUNC, BPF_ST, BPF_STX, BPF_SUB, BPF_X, bpf_insn,
};

/// 6.1's MAX_BPF_STACK: the most stack one call chain may use, in bytes.
pub const MAX_STACK: u32 = 512;
/// 6.1 rounds each function's stack up to this, a function with none too.
const FRAME_GRANULE: u32 = 32;
/// 6.1's MAX_CALL_FRAMES: the most functions in one chain, the program's own included.
const MAX_CALL_FRAMES: usize = 8;
/// The read-only frame pointer; the stack lies below it.
const FRAME_POINTER: usize = 10;
const CALL: u8 = (BPF_JMP | BPF_CALL | BPF_K) as u8;
const LD_IMM64: u8 = (BPF_LD | BPF_IMM | BPF_DW) as u8;

/// One function of a call chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    /// The deepest `r10 - N` the function reaches, in bytes.
    pub used: u32,
}

impl Frame {
    /// What 6.1 counts for it: `round_up(max(used, 1), 32)`.
    pub fn counted(&self) -> u32 {
        self.used.max(1).next_multiple_of(FRAME_GRANULE)
    }
}

/// What 6.1's walk says when it refuses a program: the first chain over a limit, in the
/// kernel's order (so the numbers match the verifier log of a 6.1 load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// "combined stack size of {calls} calls is {depth}. Too large"
    TooLarge { calls: usize, depth: u32 },
    /// "the call stack of {frames} frames is too deep !"
    TooDeep { frames: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooLarge { calls, depth } => {
                write!(f, "combined stack size of {calls} calls is {depth}. Too large")
            }
            Refusal::TooDeep { frames } => write!(f, "the call stack of {frames} frames is too deep !"),
        }
    }
}

/// One program's deepest call chain, and whether 6.1 accepts it.
#[derive(Debug, Clone)]
pub struct ProgramStack {
    pub program: String,
    /// The chain with the most counted stack, the program's entry first.
    pub worst: Vec<Frame>,
    /// What 6.1 would say; `None` when it accepts the program's call chains.
    pub refusal: Option<Refusal>,
}

impl ProgramStack {
    /// The counted stack of the worst chain.
    pub fn worst_total(&self) -> u32 {
        self.worst.iter().map(Frame::counted).sum()
    }

    /// One line: the program, its worst chain's total, and what 6.1 says.
    pub fn headline(&self) -> String {
        let mut line = format!(
            "{}: worst chain {} of {MAX_STACK} bytes",
            self.program,
            self.worst_total()
        );
        if let Some(refusal) = &self.refusal {
            line += &format!("; 6.1 refuses it: \"{refusal}\"");
        }
        line
    }
}

/// The headline, then one line a frame of the worst chain (counted, used, function), so the
/// developer sees which function to shrink.
impl fmt::Display for ProgramStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.headline())?;
        for frame in &self.worst {
            write!(
                f,
                "\n  {:>4} (uses {:>3})  {}",
                frame.counted(),
                frame.used,
                frame.function
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("parsing the eBPF object")]
    Parse(#[from] aya_obj::ParseError),
    #[error("linking each program's callees as aya does")]
    Link(#[from] aya_obj::relocation::EbpfRelocationError),
    #[error(
        "program `{program}`: the call at instruction {insn} goes to instruction {target}, outside \
         its {len} instructions"
    )]
    CallOutside {
        program: String,
        insn: usize,
        target: i64,
        len: usize,
    },
    #[error("program `{program}`: a call chain comes back to a function on it: {chain} (recursion)")]
    Recursive { program: String, chain: String },
}

/// Every program of an eBPF object as 6.1 would walk it, the worst chain first.
pub fn check_object(object: &[u8]) -> Result<Vec<ProgramStack>, StackError> {
    let mut obj = aya_obj::Object::parse(object)?;
    // aya-obj keeps each function's BTF func_info record and, when it links the function into a
    // program, moves the record to where the function starts: the BTF id names it there.
    let names: HashMap<u32, String> = obj
        .functions
        .values()
        .flat_map(|f| {
            let name = format!("{:#}", rustc_demangle::demangle(&f.name));
            f.func_info
                .func_info
                .iter()
                .map(move |r| (r.type_id, name.clone()))
        })
        .collect();
    // What `EbpfLoader::load` passes: every section holding functions.
    let text_sections = obj.functions.keys().map(|&(section, _)| section).collect();
    obj.relocate_calls(&text_sections)?;
    let mut out = Vec::new();
    for (name, program) in &obj.programs {
        let linked = &obj.functions[&program.function_key()];
        let by_start = linked
            .func_info
            .func_info
            .iter()
            .filter_map(|r| Some((r.insn_off as usize, names.get(&r.type_id)?.clone())))
            .collect();
        out.push(walk(name, &linked.instructions, &by_start)?);
    }
    out.sort_by(|a, b| {
        b.worst_total()
            .cmp(&a.worst_total())
            .then_with(|| a.program.cmp(&b.program))
    });
    Ok(out)
}

/// Walks one linked program (its entry at instruction 0, its callees behind it) the way 6.1's
/// `check_max_stack_depth()` does. `names` names functions by their first instruction; one
/// without a name is called after where it starts.
pub fn walk(
    program: &str,
    insns: &[bpf_insn],
    names: &BTreeMap<usize, String>,
) -> Result<ProgramStack, StackError> {
    // The kernel's split: the entry, and every target of a call.
    let mut starts = BTreeSet::from([0usize]);
    for (at, target) in calls(insns) {
        let inside = usize::try_from(target).ok().filter(|&t| t < insns.len());
        starts.insert(inside.ok_or_else(|| StackError::CallOutside {
            program: program.to_string(),
            insn: at,
            target,
            len: insns.len(),
        })?);
    }
    let starts: Vec<usize> = starts.into_iter().collect();
    let index_of = |insn: usize| starts.partition_point(|&s| s <= insn) - 1;
    let mut frames = Vec::new();
    let mut callees = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(insns.len());
        let body = &insns[start..end];
        frames.push(Frame {
            function: names
                .get(&start)
                .cloned()
                .unwrap_or_else(|| format!("{program}+{start} (unnamed)")),
            used: frame_used(body),
        });
        // In instruction order, as the kernel visits them (the targets are starts, above).
        callees.push(
            calls(body)
                .map(|(_, target)| index_of((start as i64 + target) as usize))
                .collect::<Vec<_>>(),
        );
    }
    let mut w = Walk {
        program,
        frames: &frames,
        callees: &callees,
        path: Vec::new(),
        depth: 0,
        worst: (0, Vec::new()),
        refusal: None,
    };
    w.visit(0)?;
    Ok(ProgramStack {
        program: program.to_string(),
        worst: w.worst.1.iter().map(|&i| frames[i].clone()).collect(),
        refusal: w.refusal,
    })
}

/// Depth-first over every call chain, as the kernel walks them, but on past the first chain
/// over the limit so the worst one is found too.
struct Walk<'a> {
    program: &'a str,
    frames: &'a [Frame],
    callees: &'a [Vec<usize>],
    path: Vec<usize>,
    depth: u32,
    worst: (u32, Vec<usize>),
    refusal: Option<Refusal>,
}

impl Walk<'_> {
    fn visit(&mut self, function: usize) -> Result<(), StackError> {
        if self.path.contains(&function) {
            let mut chain: Vec<&str> = self
                .path
                .iter()
                .map(|&i| self.frames[i].function.as_str())
                .collect();
            chain.push(&self.frames[function].function);
            return Err(StackError::Recursive {
                program: self.program.to_string(),
                chain: chain.join(" -> "),
            });
        }
        self.path.push(function);
        self.depth += self.frames[function].counted();
        if self.depth > MAX_STACK && self.refusal.is_none() {
            self.refusal = Some(Refusal::TooLarge {
                calls: self.path.len(),
                depth: self.depth,
            });
        }
        if self.depth > self.worst.0 {
            self.worst = (self.depth, self.path.clone());
        }
        for &callee in &self.callees[function] {
            if self.path.len() >= MAX_CALL_FRAMES {
                self.refusal.get_or_insert(Refusal::TooDeep {
                    frames: self.path.len(),
                });
                continue;
            }
            self.visit(callee)?;
        }
        self.depth -= self.frames[function].counted();
        self.path.pop();
        Ok(())
    }
}

/// The BPF-to-BPF calls in `insns`, as (instruction, target relative to `insns`): `call` with
/// src_reg BPF_PSEUDO_CALL, and a function's address taken for a callback (`ld_imm64` with
/// BPF_PSEUDO_FUNC), which 6.1 walks like a call. (An `ld_imm64`'s second half has code 0, so
/// it never looks like either.)
fn calls(insns: &[bpf_insn]) -> impl Iterator<Item = (usize, i64)> + '_ {
    insns.iter().enumerate().filter_map(|(at, insn)| {
        let src = u32::from(insn.src_reg());
        let is_call = (insn.code == CALL && src == BPF_PSEUDO_CALL)
            || (insn.code == LD_IMM64 && src == BPF_PSEUDO_FUNC);
        is_call.then(|| (at, at as i64 + i64::from(insn.imm) + 1))
    })
}

/// The deepest `r10 - N` one function reaches: loads and stores through r10, and through a
/// register holding r10 plus a constant. A straight pass in instruction order: LLVM makes each
/// stack pointer right before it is used, so branches are not followed.
fn frame_used(insns: &[bpf_insn]) -> u32 {
    // Per register: Some(k) while it holds r10 + k. r10 itself cannot be written.
    let mut regs = [None::<i64>; 11];
    regs[FRAME_POINTER] = Some(0);
    let get = |regs: &[Option<i64>; 11], reg: u8| regs.get(usize::from(reg)).copied().flatten();
    let set = |regs: &mut [Option<i64>; 11], reg: u8, value: Option<i64>| {
        if usize::from(reg) < FRAME_POINTER {
            regs[usize::from(reg)] = value;
        }
    };
    let mut deepest = 0i64;
    let mut reach = |base: Option<i64>, off: i16| {
        if let Some(base) = base {
            deepest = deepest.max(-(base + i64::from(off)));
        }
    };
    let mut i = 0;
    while i < insns.len() {
        let insn = &insns[i];
        let (dst, src) = (insn.dst_reg(), insn.src_reg());
        let op = u32::from(insn.code & 0xf0);
        match u32::from(insn.code & 0x07) {
            BPF_LDX => {
                reach(get(&regs, src), insn.off);
                set(&mut regs, dst, None);
            }
            BPF_ST => reach(get(&regs, dst), insn.off),
            BPF_STX => {
                reach(get(&regs, dst), insn.off);
                if u32::from(insn.code & 0xe0) == BPF_ATOMIC {
                    // Fetching atomics write their source register, cmpxchg writes r0.
                    set(&mut regs, src, None);
                    set(&mut regs, 0, None);
                }
            }
            BPF_ALU64 => {
                let k = i64::from(insn.imm);
                let value = match (op, u32::from(insn.code & 0x08)) {
                    (BPF_MOV, BPF_X) => get(&regs, src),
                    (BPF_ADD, BPF_K) => get(&regs, dst).map(|b| b + k),
                    (BPF_SUB, BPF_K) => get(&regs, dst).map(|b| b - k),
                    _ => None,
                };
                // Made to be handed on: the helper or callee writes what it points at.
                reach(value, 0);
                set(&mut regs, dst, value);
            }
            BPF_ALU => set(&mut regs, dst, None),
            BPF_LD => {
                set(&mut regs, dst, None);
                if insn.code == LD_IMM64 {
                    // Its second half is the constant's high word, not an instruction.
                    i += 1;
                }
            }
            BPF_JMP if op == BPF_CALL => (0..=5).for_each(|r| set(&mut regs, r, None)),
            _ => {}
        }
        i += 1;
    }
    u32::try_from(deepest).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use aya_obj::generated::{BPF_EXIT, BPF_MEM};

    use super::*;

    /// One instruction as it lies in the ELF: code, dst|src<<4, off, imm (little-endian).
    fn insn(code: u32, dst: u8, src: u8, off: i16, imm: i32) -> Vec<u8> {
        let mut b = vec![code as u8, dst | src << 4];
        b.extend(off.to_le_bytes());
        b.extend(imm.to_le_bytes());
        b
    }
    /// *(u64 *)(r10 - n) = r1
    fn store_fp(n: i16) -> Vec<u8> {
        insn(BPF_STX | BPF_MEM | BPF_DW, 10, 1, -n, 0)
    }
    fn call_to(from: usize, to: usize) -> Vec<u8> {
        insn(
            BPF_JMP | BPF_CALL,
            0,
            BPF_PSEUDO_CALL as u8,
            0,
            (to as i32) - (from as i32) - 1,
        )
    }
    fn exit() -> Vec<u8> {
        insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
    }
    fn decode(bytes: &[Vec<u8>]) -> Vec<bpf_insn> {
        aya_obj::copy_instructions(&bytes.concat()).unwrap()
    }
    fn named(names: &[(usize, &str)]) -> BTreeMap<usize, String> {
        names.iter().map(|&(at, n)| (at, n.to_string())).collect()
    }
    fn used(frames: &[Frame]) -> Vec<(&str, u32)> {
        frames.iter().map(|f| (f.function.as_str(), f.used)).collect()
    }

    /// main (200 bytes) calls f (280): 224 + 288 = 512, exactly the limit, accepted.
    #[test]
    fn a_chain_of_exactly_512_fits() {
        let insns = decode(&[store_fp(200), call_to(1, 3), exit(), store_fp(280), exit()]);
        let s = walk("p", &insns, &named(&[(0, "main"), (3, "f")])).unwrap();
        assert_eq!(used(&s.worst), [("main", 200), ("f", 280)]);
        assert_eq!(s.worst_total(), 512);
        assert_eq!(s.refusal, None, "{s}");
    }

    /// The shape 6.1 refused in the VM: 200 bytes calling 344 is 224 + 352 = 576.
    #[test]
    fn a_chain_over_512_is_refused_with_the_kernels_numbers() {
        let insns = decode(&[store_fp(200), call_to(1, 3), exit(), store_fp(344), exit()]);
        let s = walk("p", &insns, &named(&[(0, "fx_write"), (3, "guard_sent")])).unwrap();
        assert_eq!(s.worst_total(), 576);
        assert_eq!(
            s.refusal.as_ref().map(ToString::to_string).as_deref(),
            Some("combined stack size of 2 calls is 576. Too large")
        );
        let shown = s.to_string();
        assert!(shown.contains("224 (uses 200)  fx_write"), "{shown}");
        assert!(shown.contains("352 (uses 344)  guard_sent"), "{shown}");
    }

    /// A function with no stack counts 32; the kernel stops at the first chain over the limit
    /// while the worst chain goes on to a deeper callee.
    #[test]
    fn an_empty_frame_counts_32_and_the_worst_chain_goes_past_the_first_refusal() {
        // outer (no stack) -> inner (328) -> sent (344) -> leaf (48)
        let insns = decode(&[
            call_to(0, 2),
            exit(),
            store_fp(328),
            call_to(3, 5),
            exit(),
            store_fp(344),
            call_to(6, 8),
            exit(),
            store_fp(48),
            exit(),
        ]);
        let names = named(&[(0, "outer"), (2, "inner"), (5, "sent"), (8, "leaf")]);
        let s = walk("p", &insns, &names).unwrap();
        assert_eq!(
            s.refusal,
            Some(Refusal::TooLarge {
                calls: 3,
                depth: 32 + 352 + 352
            })
        );
        assert_eq!(
            used(&s.worst),
            [("outer", 0), ("inner", 328), ("sent", 344), ("leaf", 48)]
        );
        assert_eq!(s.worst_total(), 32 + 352 + 352 + 64);
    }

    /// Two callees: the worst chain is the deeper one, whichever comes first.
    #[test]
    fn the_worst_of_two_callees_is_reported() {
        let insns = decode(&[
            store_fp(64),
            call_to(1, 4),
            call_to(2, 6),
            exit(),
            store_fp(16),
            exit(),
            store_fp(96),
            exit(),
        ]);
        let s = walk("p", &insns, &named(&[(0, "main"), (4, "small"), (6, "big")])).unwrap();
        assert_eq!(used(&s.worst), [("main", 64), ("big", 96)]);
        assert_eq!(s.refusal, None);
    }

    /// Nine functions deep is refused for depth even with little stack.
    #[test]
    fn nine_frames_are_too_deep() {
        let mut bytes = Vec::new();
        for f in 0..9 {
            let at = f * 2;
            bytes.push(if f < 8 { call_to(at, at + 2) } else { store_fp(8) });
            bytes.push(exit());
        }
        let s = walk("p", &decode(&bytes), &BTreeMap::new()).unwrap();
        assert_eq!(s.refusal, Some(Refusal::TooDeep { frames: 8 }));
    }

    #[test]
    fn recursion_is_an_error_not_a_loop() {
        let insns = decode(&[call_to(0, 2), exit(), call_to(2, 2), exit()]);
        let e = walk("p", &insns, &named(&[(0, "main"), (2, "again")])).unwrap_err();
        assert!(e.to_string().contains("main -> again -> again"), "{e}");
    }

    #[test]
    fn a_call_outside_the_program_is_an_error() {
        let insns = decode(&[call_to(0, 7), exit()]);
        assert!(matches!(
            walk("p", &insns, &BTreeMap::new()),
            Err(StackError::CallOutside { .. })
        ));
    }

    /// Frames: stores and loads through r10, a pointer made from r10 for a helper, through a
    /// copy of it with an offset of its own; not positive offsets, other registers, or a
    /// pointer overwritten before use; an ld_imm64's second half is no instruction.
    #[test]
    fn frame_sizes_come_from_every_way_to_reach_the_stack() {
        let ldx = |dst: u8, src: u8, off: i16| insn(BPF_LDX | BPF_MEM | BPF_DW, dst, src, off, 0);
        let st = |dst: u8, off: i16| insn(BPF_ST | BPF_MEM | BPF_DW, dst, 0, off, 7);
        let mov = |dst: u8, src: u8| insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0);
        let add = |dst: u8, k: i32| insn(BPF_ALU64 | BPF_ADD | BPF_K, dst, 0, 0, k);
        let helper = insn(BPF_JMP | BPF_CALL, 0, 0, 0, 113); // bpf_probe_read_kernel
        // r1 = 64-bit constant: two slots, the second one all zero but the constant's high word.
        let lddw = |dst: u8| [insn(BPF_LD | BPF_IMM | BPF_DW, dst, 0, 0, 1), insn(0, 0, 0, 0, 0)].concat();
        let f = |bytes: &[Vec<u8>]| frame_used(&decode(bytes));
        assert_eq!(f(&[store_fp(24), exit()]), 24);
        assert_eq!(f(&[ldx(1, 10, -40), exit()]), 40);
        assert_eq!(f(&[st(10, -12), exit()]), 12);
        // r1 = r10; r1 += -96; call helper: the helper writes the buffer at r10 - 96.
        assert_eq!(
            f(&[store_fp(8), mov(1, 10), add(1, -96), helper.clone(), exit()]),
            96
        );
        // r2 = r10; r2 += -64; r3 = r2; *(u64 *)(r3 - 8) = 7  reaches r10 - 72.
        assert_eq!(f(&[mov(2, 10), add(2, -64), mov(3, 2), st(3, -8), exit()]), 72);
        // The helper's return clobbers r1: a later store through r1 is not the stack.
        assert_eq!(f(&[mov(1, 10), add(1, -16), helper, st(1, -300), exit()]), 16);
        assert_eq!(f(&[ldx(1, 2, -200), st(3, -300), exit()]), 0);
        // The second half is no instruction writing r0: r0 still points at r10 - 120 after it.
        assert_eq!(f(&[mov(0, 10), add(0, -120), lddw(1), st(0, 0), exit()]), 120);
    }

    /// The embedded object, checked exactly as it ships: every program's deepest call chain
    /// must fit 6.1's 512 bytes. On failure it lists each refused program's worst chain with
    /// every function's frame; `--nocapture` prints every program's total.
    #[test]
    fn embedded_programs_fit_the_6_1_combined_stack_limit() {
        let object = super::super::OBJECT;
        if object.is_empty() {
            assert!(
                std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
                "the embedded eBPF object is empty, yet AYA_BUILD_SKIP is not set"
            );
            eprintln!("SKIPPED 6.1 stack check: built with AYA_BUILD_SKIP, no kernel object embedded");
            return;
        }
        let programs = check_object(object)
            .map_err(anyhow::Error::from)
            .unwrap_or_else(|e| panic!("{e:#}"));
        // The walk must have seen programs and calls, or it checks nothing.
        assert!(programs.len() > 10, "only {} programs found", programs.len());
        assert!(
            programs.iter().any(|p| p.worst.len() > 1),
            "no program calls a function: the walk found no BPF-to-BPF calls"
        );
        for p in &programs {
            println!("{}", p.headline());
        }
        let refused: Vec<String> = programs
            .iter()
            .filter(|p| p.refusal.is_some())
            .map(ToString::to_string)
            .collect();
        assert!(
            refused.is_empty(),
            "{} of {} programs would be refused by Linux 6.1 (combined stack over {MAX_STACK} \
             bytes; each frame rounded up to 32): shrink a frame on each chain below\n{}",
            refused.len(),
            programs.len(),
            refused.join("\n")
        );
    }
}
