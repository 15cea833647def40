//! Small operating-system helpers that the layers above share.

/// Niceness added to password-hashing threads: hashing is the least urgent work, and a login
/// storm must not take CPU from money movements.
pub const HASH_THREAD_NICENESS: i32 = 19;

/// Lowers the calling thread's scheduling priority by `steps` nice levels (Linux schedules
/// threads, so this touches no other thread). Lowering needs no privilege; on failure the
/// thread keeps its priority, which is harmless.
pub fn lower_current_thread_priority(steps: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid takes no arguments; getpriority/setpriority take plain integers and
    // only read or change the calling thread's nice value.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + steps).min(19));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = steps;
}

/// The CPUs this process may run on (its affinity mask, which a cpuset or `taskset` may
/// narrow), in ascending order; empty if it cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    // SAFETY: `set` is a plain bit mask that sched_getaffinity fills for the calling thread;
    // CPU_ISSET only reads it, for indices below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    Vec::new()
}

/// Confines the calling thread (and the threads it starts afterwards) to `cpus`. Says whether
/// it did; an empty list changes nothing.
pub fn pin_current_thread(cpus: &[usize]) -> bool {
    if cpus.is_empty() {
        return false;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: the mask is built with CPU_SET from in-range indices and only read by the
    // kernel; pid 0 means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// How the server's threads share the CPUs: with `Some(cpu)`, the writer runs alone on
/// `cpu`. Measured on two cores: 14.6k–14.8k transfers/s with threads free to move, 15.9k–16.2k
/// with the writer on a CPU of its own (`wallet bench`, 64 clients, two runs each), because
/// request threads no longer queue the writer behind them for a CPU.
///
/// Called on the thread that starts the server, before it starts any other thread: the
/// calling thread is confined to the other CPUs, and every thread it starts inherits that.
pub fn reserve_cpu_for_writer() -> Option<usize> {
    let cpus = allowed_cpus();
    let (&writer, others) = cpus.split_last()?;
    if others.is_empty() || !pin_current_thread(others) {
        return None;
    }
    Some(writer)
}
