import Foundation
import ZooExperiment
import ZooTraining

/// Runs the points of a sweep concurrently as child processes (`zoo train … --run NAME
/// --threads K`), at most `concurrency` at a time.
///
/// Why processes: the thread policy (`ZooThreads.count`, OpenBLAS pinned to one thread) is global
/// to a process, so J runs inside one process would share one worker pool and step on each other's
/// timing. J children with threads/J workers each split the cores cleanly, keep their own
/// checkpoints and logs, and a crash or NaN in one run does not stop the others.
public enum SweepScheduler {
    public struct Job: Sendable {
        public var name: String
        public var arguments: [String]
        /// stdout and stderr of the child, appended.
        public var logFile: URL
        public init(name: String, arguments: [String], logFile: URL) { self.name = name; self.arguments = arguments; self.logFile = logFile }
    }

    public struct Outcome: Sendable, Equatable {
        public var name: String
        /// The child's exit status (nil: never started because a stop was requested).
        public var status: Int32?
        public var seconds: Double
    }

    /// Runs the jobs; returns one outcome per job, in job order. When `stopRequested` turns true,
    /// no further job starts and running children get SIGTERM (zoo train saves a checkpoint and
    /// exits on it).
    public static func run(executable: URL, jobs: [Job], concurrency: Int, log: (String) -> Void = { print($0) },
                           stopRequested: () -> Bool = { false }) throws -> [Outcome] {
        precondition(concurrency >= 1, "SweepScheduler.run: concurrency must be ≥ 1")
        var running: [Int: (pid: pid_t, started: Double)] = [:]
        var outcomes = jobs.map { Outcome(name: $0.name, status: nil, seconds: 0) }
        var next = 0, finishedCount = 0
        var stopping = false
        while next < jobs.count || !running.isEmpty {
            if !stopping && stopRequested() {
                stopping = true
                log("stop requested: no new runs start; \(running.count) running run(s) save a checkpoint and stop")
                for (_, r) in running { kill(r.pid, SIGTERM) }
            }
            while !stopping && running.count < concurrency && next < jobs.count {
                let job = jobs[next]
                running[next] = (try spawn(executable, job), monotonicSeconds())
                log("[\(next + 1)/\(jobs.count)] started \(job.name) (log: \(job.logFile.path))")
                next += 1
            }
            if running.isEmpty { break }
            usleep(100_000)
            for (i, r) in running {
                var status: Int32 = 0
                guard waitpid(r.pid, &status, WNOHANG) == r.pid else { continue }
                // Exit code, or 128 + signal for a child killed by a signal (as shells report it).
                let code: Int32 = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
                let seconds = monotonicSeconds() - r.started
                outcomes[i] = Outcome(name: jobs[i].name, status: code, seconds: seconds)
                running[i] = nil
                finishedCount += 1
                log("[\(finishedCount)/\(jobs.count) done] \(jobs[i].name): "
                    + (code == 0 ? "finished" : "exit status \(code)") + String(format: " after %.0f s", seconds))
            }
        }
        return outcomes
    }

    /// Starts one child with posix_spawn: stdout and stderr appended to the job's log, stdin from
    /// /dev/null, and SIGINT/SIGTERM unblocked and at their defaults. (Foundation's Process passes
    /// on the spawning thread's signal mask, and worker threads block SIGTERM, so a child could
    /// never be stopped.)
    static func spawn(_ executable: URL, _ job: Job) throws -> pid_t {
        try FileManager.default.createDirectory(at: job.logFile.deletingLastPathComponent(), withIntermediateDirectories: true)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, job.logFile.path, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t(), defaults = sigset_t()
        sigemptyset(&none)
        sigemptyset(&defaults)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGPIPE] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable.path] + job.arguments).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable.path, &actions, &attributes, argv, environ)
        guard result == 0 else {
            throw EvalError("cannot start \(executable.path) for \(job.name): \(String(cString: strerror(result)))")
        }
        return pid
    }

    /// This process's executable (to start children of the same build).
    public static func currentExecutable() -> URL {
        if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return URL(fileURLWithPath: path) }
        return Bundle.main.executableURL ?? URL(fileURLWithPath: CommandLine.arguments[0])
    }

    /// The last `count` lines of a log, for reporting a failed child.
    public static func tail(_ url: URL, lines count: Int = 5) -> String {
        guard let text = try? String(contentsOf: url, encoding: .utf8) else { return "" }
        return text.split(separator: "\n", omittingEmptySubsequences: true).suffix(count).joined(separator: "\n")
    }
}

/// The sweep side of `zoo train`: config files and folders of them, the run points they expand
/// to, the checks before anything starts, and the child command of one point.
public enum SweepTraining {
    /// One point of one config file.
    public struct Point: Sendable {
        public var file: String
        public var run: ExperimentRun
        public init(file: String, run: ExperimentRun) { self.file = file; self.run = run }
    }

    /// Config files: each argument is a YAML file or a folder whose `*.yaml` / `*.yml` files (not
    /// sub-folders) are taken in name order.
    public static func configFiles(_ arguments: [String]) throws -> [String] {
        var files: [String] = []
        for a in arguments {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: a, isDirectory: &isDirectory) else {
                throw ConfigError(file: a, keyPath: "", "no such file or folder")
            }
            if isDirectory.boolValue {
                let names = try FileManager.default.contentsOfDirectory(atPath: a).filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }.sorted()
                guard !names.isEmpty else { throw ConfigError(file: a, keyPath: "", "the folder holds no .yaml configs") }
                files += names.map { URL(fileURLWithPath: a).appendingPathComponent($0).path }
            } else {
                files.append(a)
            }
        }
        return files
    }

    /// Every point of every file (strictly loaded: a bad file fails before any run), keeping only
    /// `only` run names when given. Two points that would share a run folder are refused.
    public static func points(files: [String], overrides: [String], only: [String] = [], output: URL) throws -> [Point] {
        var points: [Point] = []
        for f in files { points += try ConfigLoader.loadRuns(path: f, overrides: overrides).map { Point(file: f, run: $0) } }
        if !only.isEmpty {
            let names = Set(points.map(\.run.name))
            for name in only where !names.contains(name) {
                throw EvalError("--run \(name): no such run; the runs are \(points.map(\.run.name).joined(separator: ", "))")
            }
            points = points.filter { only.contains($0.run.name) }
        }
        var seen: [String: String] = [:]
        for p in points {
            let dir = ExperimentRunner.runDirectory(p.run, output: output).path
            if let other = seen[dir] {
                throw EvalError("\(p.file) and \(other) both write run \(p.run.name) of experiment \(p.run.config.name) into \(dir); "
                                + "give the experiments different names or sweep points")
            }
            seen[dir] = p.file
        }
        return points
    }

    /// Runs that hold a checkpoint but have not finished need `--resume` (continue) or `--restart`;
    /// all of them are named at once, before any run starts.
    public static func checkUnfinished(_ points: [Point], output: URL, resume: Bool, restart: Bool) throws {
        guard !resume && !restart else { return }
        let blocked = points.map { ExperimentRunner.runDirectory($0.run, output: output) }.filter {
            !ExperimentRunner.isFinished($0)
                && FileManager.default.fileExists(atPath: $0.appendingPathComponent("checkpoint.safetensors").path)
        }
        guard blocked.isEmpty else {
            throw EvalError("\(blocked.count) run(s) hold an unfinished run's checkpoint: \(blocked.map(\.path).joined(separator: ", ")); "
                            + "pass --resume to continue them or --restart to start over")
        }
    }

    /// The `zoo train` arguments that train exactly `point` in a child process.
    public static func childArguments(_ point: Point, overrides: [String], output: URL, threads: Int,
                                      resume: Bool, restart: Bool) -> [String] {
        ["train", point.file] + overrides.flatMap { ["--set", $0] }
            + ["--run", point.run.name, "--threads", String(threads), "--output", output.path, "--no-eval"]
            + (resume ? ["--resume"] : []) + (restart ? ["--restart"] : [])
    }

    /// A one-line account of a finished run from its done.json.
    public static func doneSummary(_ runDirectory: URL) -> String? {
        guard let data = try? Data(contentsOf: runDirectory.appendingPathComponent("done.json")),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        let reason = json["reason"] as? String ?? "?", steps = json["steps"] as? String ?? "?"
        let loss = (json["final_loss"] as? String).flatMap(Double.init).map { String(format: "%.4f", $0) } ?? "?"
        let metrics = (json["metrics"] as? String ?? "").split(separator: ";").compactMap { item -> String? in
            let kv = item.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, let v = Double(kv[1]) else { return nil }
            return "\(kv[0]) \(String(format: "%.4f", v))"
        }
        return "\(reason) after \(steps) steps, loss \(loss)" + metrics.map { ", " + $0 }.joined()
    }

    /// The evaluation that follows training when the experiment's `eval.after_train` asks for it:
    /// its finished run folders, evaluated into `<output>/<name>/eval`.
    public static func evaluationTargets(_ points: [Point], output: URL) throws -> [EvalTarget] {
        try points.map { try EvalInputs.runFolder(ExperimentRunner.runDirectory($0.run, output: output)) }
    }
}
