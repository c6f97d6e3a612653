/*
 * The switch protocol of engine/switch_protocol.h, as a Promela model.
 *
 * One lock group with two sites: site 0 is the lock op, site 1 the unlock op. Variant 0 (A) is the
 * ticket lock, whose state is in encoding 0; variant 1 (B) is the pv lock, encoding 1. A site is
 * two bytes: its head (first byte: a padding prefix, 0 or 1, or INT3) and its tail (the rest of
 * the instruction, which names the variant). docs/switch-protocol.md maps every part to the code.
 *
 * Safeguards, each removed by one define (model/check builds a mutant per define):
 *   NO_PREFIX_ALTERNATION  a switch keeps the site's padding prefix, so old[0] == new[0]
 *   NO_INOP_RECHECK        op bodies do not read the group's phase word after their in-op mark
 *   NO_EXECUTOR_COUNT      executors do not count in as writers; the primary does not close its
 *                          attempt and wait for them before the next one
 *   NO_ONLINE_GATE         a vCPU coming online does not wait while a switch is in progress
 * Configurations (the whole model at once is too large for minutes on two cores):
 *   WITH_NMI               an NMI on the primary's CPU runs an op while a switch runs
 *   ONE_VCPU               only vCPU 0 (used with WITH_NMI)
 *   WITH_OFFLINE           vCPU 1 starts offline, comes online, may go offline and online again
 *   LIVE                   adds the LTL property waiters_served (check with pan -a -f)
 *   ROUNDS                 lock/unlock rounds per vCPU (default 2)
 *
 * The serialise of an attempt reaches the CPUs online when the attempt began, the caller and the
 * primary's CPU (the reach of sync IPIs); a vCPU that comes online later serialises itself. An
 * executor on CPU c that may wait for in-op vCPUs (waits = 1) does so up to a deadline: modelled
 * as reading the marks at any later moment, or giving up (backward).
 */

#define NCPU   3          /* CPUs 0 and 1: the vCPUs; CPU 2: the primary's */
#define PCPU   2
#define INT3   2          /* a head byte: 0 and 1 are the two padding prefixes */
#define UNDEC  0          /* attempt directions */
#define FWD    1
#define BWD    2
#ifndef ROUNDS
#define ROUNDS 2          /* lock/unlock rounds per vCPU: bounds the model */
#endif
#define NMI_ID 3          /* lock owner ids: vCPU v is v + 1, an NMI handler is 3 */

/* code bytes, in memory (through the alias) and as each CPU may still execute them */
byte mh[2];               /* heads */
bit  mt[2];               /* tails */
byte ih[2];               /* what vCPU 1 saw at its last serialise, per site */
bit  it[2];
bit  valid[4];            /* ghost: images ever installed, valid[prefix * 2 + variant] */

/* attempts 1 and 2 (index 0 unused) */
byte dir[3];
bit  from[3];             /* variant the attempt switches from; to is 1 - from */
bit  fromh[3];            /* its sites' padding prefix */
bit  toh[3];              /* the prefix the new image gets */
byte published;           /* g_published: the attempt executors find (0: none yet) */
byte writers[3];          /* per attempt: executors counted in as writers (enter_writing) */
bit  closed[3];           /* per attempt: closed to new writers (close_and_drain_writers) */
byte started;             /* ghost: the newest attempt past its drain, i.e. writing */

/* what op bodies and the online gate read */
bit  phase_sw;            /* group phase word: kPhaseSwitching */
bit  phase_var;           /*                   the group's variant */
bit  sip;                 /* switch in progress (the online gate waits while it is set) */
byte targets;             /* CPUs that the attempt's serialise reaches (bit c) */
bit  online[2];
byte inop[NCPU];          /* per CPU in-op depth of the group (sync::VcpuSlot::in_op) */

/* the lock */
bit  enc;                 /* encoding of the lock word */
byte held;                /* owner id, 0 when free */
byte waiting;             /* waiters announced in the lock word: bit v for vCPU v */

bit  curv;                /* the primary's view: the group's variant and prefix */
bit  curp;

/* ---------------------------------------------------------------------------------------- */

/* membarrier / sync IPI: every CPU the attempt reaches, and the caller, now execute what memory
 * holds. Only vCPU 1 (the one that goes offline) keeps a view of its own: every other CPU is reached
 * by every serialise, and a CPU reached by every serialise runs, at any moment, bytes that memory
 * held at a moment of the current step, which fetching from memory interleaved with the writes
 * already covers. */
inline serialise(c) {
  atomic {
    if :: (c == 1 || (targets & 2)) -> ih[0] = mh[0]; ih[1] = mh[1]; it[0] = mt[0]; it[1] = mt[1]
       :: else -> skip
    fi
  }
}

/* An op body of variant `v` touches the lock: the safety properties. */
inline check(v) {
  /* no old-variant body on a new-encoded lock */
  assert(enc == v);
  /* never half switched: every site of the group holds v (or is fenced) */
  assert((mh[0] == INT3 || mt[0] == v) && (mh[1] == INT3 || mt[1] == v))
}

/* Steps 1 to 8 (run_switch_protocol) of attempt k, by an executor on CPU c. `waits`: it may wait
 * for quiescence up to a deadline (the primary, and a #BP executor outside op and NMI). */
inline protocol(k, c, waits) {
  if
  :: dir[k] == UNDEC ->
     /* 1 fence: compare-and-swap old[0] -> INT3 (Transaction::fence) */
     atomic { if :: mh[0] == fromh[k] ->
                    assert(mt[0] == from[k] && started == k);   /* a late replay never writes */
                    mh[0] = INT3
                 :: else -> skip fi };
     atomic { if :: mh[1] == fromh[k] ->
                    assert(mt[1] == from[k] && started == k);
                    mh[1] = INT3
                 :: else -> skip fi };
     /* 2 serialise */
     serialise(c);
     /* 3 decide: quiescence from every CPU's in-op depth; a waiter may give up at its deadline */
     atomic { q = (inop[0] + inop[1] + inop[2] == 0) };
     if :: waits -> if :: skip :: q = 0 fi
        :: else -> skip
     fi;
     atomic { if :: dir[k] == UNDEC -> if :: q -> dir[k] = FWD :: else -> dir[k] = BWD fi
                 :: else -> skip fi }
  :: else -> skip
  fi;
  if
  :: dir[k] == FWD ->
     /* 4 convert (GroupState::convert: idempotent) */
     atomic { if :: enc == from[k] -> assert(started == k); enc = 1 - from[k]
                 :: else -> skip fi };
     /* 5 tails: plain stores, only on fenced sites */
     atomic { assert(mh[0] == INT3 || mt[0] != from[k]);
              if :: mt[0] == from[k] -> assert(started == k) :: else -> skip fi;
              mt[0] = 1 - from[k] };
     atomic { assert(mh[1] == INT3 || mt[1] != from[k]);
              if :: mt[1] == from[k] -> assert(started == k) :: else -> skip fi;
              mt[1] = 1 - from[k] };
     /* 6 serialise */
     serialise(c);
     /* 7 heads: plain stores INT3 -> new[0] */
     atomic { if :: mh[0] != toh[k] -> assert(mh[0] == INT3 && started == k) :: else -> skip fi;
              mh[0] = toh[k]; valid[toh[k] * 2 + 1 - from[k]] = 1 };
     atomic { if :: mh[1] != toh[k] -> assert(mh[1] == INT3 && started == k) :: else -> skip fi;
              mh[1] = toh[k] };
     /* 8 serialise */
     serialise(c)
  :: else ->
     /* backward 4 unfence: compare-and-swap INT3 -> old[0] */
     atomic { if :: mh[0] == INT3 -> assert(mt[0] == from[k] && started == k); mh[0] = fromh[k]
                 :: else -> skip fi };
     atomic { if :: mh[1] == INT3 -> assert(mt[1] == from[k] && started == k); mh[1] = fromh[k]
                 :: else -> skip fi };
     /* backward 5 serialise */
     serialise(c)
  fi
}

/* The #BP handler (engine/int3_handler.cpp, handle_site_trap), on CPU c for site s. A trap that may
 * wait (outside an op and an NMI handler) may give way to the primary instead: it writes nothing
 * and runs the site again (primary_at_work). Otherwise it counts itself in as a writer of the
 * attempt, unless the attempt is closed and its last writer has left. */
inline trap(c, s, waits) {
  k = published;
  if
  :: k == 0 ->
     /* no attempt yet: nobody has fenced anything */
     assert(mh[s] != INT3)
  :: else ->
     if
     :: waits -> skip                                   /* gives way */
     :: atomic {
#ifndef NO_EXECUTOR_COUNT
          (closed[k] == 0 || writers[k] > 0) ->
          writers[k]++;
#endif
          w = 1 }
     :: atomic {
#ifndef NO_EXECUTOR_COUNT
          (closed[k] == 1 && writers[k] == 0) ->
#endif
          skip }                                        /* closed: resume at the site */
     fi;
     if
     :: w ->
        protocol(k, c, waits);
#ifndef NO_EXECUTOR_COUNT
        writers[k]--;
#endif
        w = 0
     :: else -> skip
     fi
  fi;
  q = 0; k = 0
}

/* Executing site s on CPU c: each byte is what the CPU saw at its last serialise, or what memory
 * holds now. An INT3 traps; the handler resumes at the site's start. */
inline exec_site(c, s, waits) {
  do
  :: atomic {
       if :: c == 1 -> if :: h = ih[s] :: h = mh[s] fi; if :: t = it[s] :: t = mt[s] fi
          :: else -> h = mh[s]; t = mt[s]
       fi;
       if :: h == INT3 -> skip
          :: else -> assert(valid[h * 2 + t]); var = t; h = 0; t = 0; break   /* a whole image */
       fi
     };
     h = 0; t = 0;
     trap(c, s, waits)
  od
}

/* OpInFlight, then the phase recheck: a body whose variant is not the settled one, or that finds a
 * switch announced, keeps to the tag-checked path, which is correct in both encodings (it acts on
 * the word only if it is in its own encoding, else returns to its site). */
inline recheck(v) {
#ifdef NO_INOP_RECHECK
  fast = 1
#else
  atomic { fast = (phase_sw == 0 && phase_var == v) }
#endif
}

/* The lock body of variant var on CPU c for owner me; ok = 0: back to the site. */
inline lock_body(c, me) {
  inop[c]++;
  recheck(var);
  if
  :: fast ->
     atomic { check(var);
              if :: held == 0 -> held = me :: else -> waiting = waiting | (1 << (me - 1)) fi };
     atomic { held == me; check(var) };                       /* a waiter spins here */
     ok = 1
  :: else ->
     atomic { if :: enc == var ->
                    if :: held == 0 -> held = me :: else -> waiting = waiting | (1 << (me - 1)) fi;
                    ok = 1
                 :: else -> ok = 0 fi };
     if :: ok -> held == me :: else -> skip fi
  fi;
  inop[c]--;
  fast = 0
}

/* Unlock: the lock goes to an announced waiter (ticket order, or the pv kick), else it is free. */
inline hand_over() {
  if :: waiting & 1 -> held = 1; waiting = waiting & 2
     :: waiting & 2 -> held = 2; waiting = waiting & 1
     :: waiting == 0 -> held = 0
  fi
}

/* An NMI handler's op, one site: take the lock if it is free and give it back at once (a
 * trylock, its critical section and its unlock in one body); it never waits for the lock. */
inline nmi_body(c) {
  inop[c]++;
  recheck(var);
  atomic {
    if :: fast -> check(var) :: else -> skip fi;
    if :: (fast || enc == var) && held == 0 -> held = NMI_ID :: else -> skip fi
  };
  atomic {
    if :: fast -> check(var) :: else -> skip fi;
    if :: held == NMI_ID -> hand_over() :: else -> skip fi
  };
  inop[c]--;
  fast = 0
}

inline unlock_body(c, me) {
  inop[c]++;
  recheck(var);
  atomic {
    if :: fast -> check(var) :: else -> skip fi;
    if :: fast || enc == var ->
          assert(held == me);
          hand_over();
          ok = 1
       :: else -> ok = 0
    fi
  };
  inop[c]--;
  fast = 0
}

/* go_online / come_online (sync/vcpu.cpp) and online_gate (sync/stop_machine.cpp) */
inline come_online(v) {
  online[v] = 1;
#ifndef NO_ONLINE_GATE
  sip == 0;
#endif
  atomic { ih[0] = mh[0]; ih[1] = mh[1]; it[0] = mt[0]; it[1] = mt[1] }   /* serialise itself */
}

proctype vcpu(byte v) {
  byte h, k, var; bit t, q, ok, fast, w;
#ifdef WITH_OFFLINE
  if :: v == 1 -> come_online(v) :: else -> skip fi;   /* vCPU 1 starts offline */
#endif
  byte rounds = 0; bit again;
end_loop:
  do
  :: online[v] && rounds < ROUNDS ->
     rounds++;
     do :: exec_site(v, 0, 1); lock_body(v, v + 1); if :: ok -> break :: else -> skip fi od;
     /* critical section */
     do :: exec_site(v, 1, 1); unlock_body(v, v + 1); if :: ok -> break :: else -> skip fi od;
     var = 0; ok = 0
#ifdef WITH_OFFLINE
  :: v == 1 && rounds == 1 && online[v] && !again ->
     again = 1; online[v] = 0;                          /* go_offline, once */
     come_online(v)
#endif
  od
}

/* One NMI, on vCPU 0 or on the primary's CPU, that runs ops of the group (and so may complete the
 * switch: an executor in an NMI never waits). */
proctype nmi() {
  byte c, h, k, var; bit t, q, ok, fast, w;
  c = PCPU;   /* a separate process: it also covers an NMI on a vCPU, whose op it runs beside */
end_idle:
  sip == 1;                     /* it arrives while a switch runs (or never): when it matters */
  exec_site(c, 0, 0);
  nmi_body(c)
}

/* The stopless writer (engine/switch.cpp, write_without_stop), two attempts. */
proctype primary() {
  byte k = 1, j; bit q;
  do
  :: k <= 2 ->
     /* plan: the next attempt switches the current variant to the other one */
     from[k] = curv; fromh[k] = curp;
#ifdef NO_PREFIX_ALTERNATION
     toh[k] = curp;
#else
     toh[k] = 1 - curp;
#endif
     /* sites_hold_old: nothing else writes the sites now */
     assert(mh[0] == fromh[k] && mh[1] == fromh[k] && mt[0] == from[k] && mt[1] == from[k]);
     /* announce (group_phase.h), then the switch in progress and the CPUs it reaches */
     phase_sw = 1;
     atomic { sip = 1; targets = online[0] + 2 * online[1] };
     /* publish_attempt: executors find this attempt from now on (the one before was closed
      * and its writers drained when it ended, below) */
     atomic { published = k; started = k };
     j = k;
     protocol(j, PCPU, 1);
     q = 0;
     /* the attempt ends: close it to new writers and wait for those counted in (it stays
      * published); then 9 release: settle the phase */
#ifndef NO_EXECUTOR_COUNT
     closed[k] = 1;
     writers[k] == 0;
#endif
     atomic {
       if :: dir[k] == FWD -> curv = 1 - from[k]; curp = toh[k] :: else -> skip fi;
       phase_var = curv; phase_sw = 0; sip = 0
     };
     k++
  :: else -> break
  od
}

init {
  atomic {
    valid[0] = 1;                 /* prefix 0, variant A: the boot image */
    online[0] = 1;
#ifndef WITH_OFFLINE
    online[1] = 1;
#endif
    run primary();
    run vcpu(0);
#ifndef ONE_VCPU
    run vcpu(1);
#endif
#ifdef WITH_NMI
    run nmi();
#endif
  }
}

#ifdef LIVE
/* every waiter eventually gets the lock (check with weak fairness: pan -a -f) */
ltl waiters_served { [] (((waiting & 1) -> <> (held == 1)) && ((waiting & 2) -> <> (held == 2))) }
#endif
