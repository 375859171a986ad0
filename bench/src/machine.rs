//! What the whole machine did over an interval: CPU time and context switches, from
//! `/proc/stat`, for telling a bench that is bound by the CPU from one that waits.

/// The machine's CPU time (all cores, from `/proc/stat`) and context switches summed over
/// slices, with the requests those slices served.
#[derive(Debug, Default, Clone, Copy)]
pub struct MachineUse {
    busy: f64,
    system: f64,
    /// Time the hypervisor gave to other machines.
    stolen: f64,
    total: f64,
    switches: f64,
    requests: f64,
}

impl MachineUse {
    /// The counters now (zeros where `/proc/stat` is unreadable).
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let mut now = Self::default();
        for line in stat.lines() {
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("cpu") => {
                    // user nice system idle iowait irq softirq steal
                    let ticks: Vec<f64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
                    if ticks.len() == 8 {
                        now.total = ticks.iter().sum();
                        now.busy = now.total - ticks[3] - ticks[4] - ticks[7];
                        now.system = ticks[2] + ticks[5] + ticks[6];
                        now.stolen = ticks[7];
                    }
                }
                Some("ctxt") => {
                    now.switches = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
                }
                _ => {}
            }
        }
        now
    }

    /// Adds the interval from `before` to `after`, which served `requests`.
    pub fn add(&mut self, before: Self, after: Self, requests: f64) {
        self.busy += after.busy - before.busy;
        self.system += after.system - before.system;
        self.stolen += after.stolen - before.stolen;
        self.total += after.total - before.total;
        self.switches += after.switches - before.switches;
        self.requests += requests;
    }
}

impl std::fmt::Display for MachineUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let share = |part: f64| 100.0 * part / self.total.max(1.0);
        write!(
            f,
            "CPU {:.0}% busy ({:.0}% in the kernel, {:.0}% stolen by the host), {:.1} context switches per request",
            share(self.busy),
            share(self.system),
            share(self.stolen),
            self.switches / self.requests.max(1.0)
        )
    }
}
