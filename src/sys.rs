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
