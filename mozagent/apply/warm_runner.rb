# mozagent's warm puppet runner: puppet and facter loaded once, warmed with
# one no-op apply, then one forked child per run.
#
# A bare `puppet apply` spends most of its time starting Ruby, loading puppet,
# initialising settings and facter; a child forked from a warm parent starts
# with all of that done and then runs `puppet apply` with the agent's argv,
# its environment and its output pipes, with puppet's settings and facter's
# facts cleared so that it reads everything (manifests, Hiera data, facts,
# modules' lib/) afresh. The agent (mozagent/apply/warm.py) starts this
# program, owns its lifetime and judges its runs; this side knows nothing of
# cgroups, marks or timeouts beyond doing what a request says.
#
# Protocol: one SOCK_SEQPACKET socket to the agent, its fd in ARGV[0]; one
# JSON document per message.
#   runner -> agent  {"ready": {...}} | {"failed": "why"}   after the warm-up
#   agent -> runner  {"argv": [...], "env": {...}, "cwd": "..."|null,
#                     "fds": ["stdout", "stderr"?, "cgroup"?]}  with those fds
#   runner -> agent  {"started": PID}, later {"exit": N} | {"signal": N}
#   runner -> agent  {"idle": SECONDS}   and it exits: nothing asked for that long
# The agent closing its end ends the runner, and the run in progress with it.

require 'json'
require 'socket'

MAX_MESSAGE = 256 * 1024

ctl = Socket.for_fd(Integer(ARGV.fetch(0)))
ctl.close_on_exec = true
idle_exit = Float(ARGV.fetch(1))
warm_argv = JSON.parse(ARGV.fetch(2))

def say(ctl, doc)
  ctl.sendmsg(JSON.generate(doc))
end

def rss_kib
  File.read('/proc/self/status')[/^VmRSS:\s+(\d+)/, 1].to_i
rescue StandardError
  0
end

started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
begin
  require 'puppet'
  require 'puppet/util/command_line'
  require 'facter'
  begin
    Puppet::Util::CommandLine.new('puppet', warm_argv).execute
  rescue SystemExit => e
    raise "the warm-up run exited #{e.status}" unless [0, 2].include?(e.status)
  end
rescue Exception => e # rubocop:disable Lint/RescueException -- any failure is the agent's to report
  say(ctl, 'failed' => "#{e.class}: #{e.message}"[0, 2000])
  exit!(1)
end
GC.start
say(ctl, 'ready' => {
      'pid' => Process.pid,
      'puppet' => Puppet.version,
      'ruby' => RUBY_VERSION,
      'warm_seconds' => (Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).round(3),
      'rss_kib' => rss_kib,
      'loaded' => $LOADED_FEATURES.select { |f| f.start_with?('/') }
    })

# The child: a `puppet apply` with the request's argv, environment and output.
def run_child(req, ios, ctl, synced)
  ctl.close
  Process.setsid # its own process group and session, as the agent gives an exec'd puppet
  synced.syswrite('x')
  synced.close
  names = req.fetch('fds')
  fds = names.zip(ios).to_h
  if (cgroup = fds['cgroup'])
    cgroup.syswrite('0') # joins the run's cgroup: "0" is the writing process
    cgroup.close
  end
  $stdin.reopen('/dev/null')
  $stdout.reopen(fds.fetch('stdout'))
  $stderr.reopen(fds['stderr'] || fds.fetch('stdout'))
  $stdout.sync = true
  $stderr.sync = true
  fds.each_value { |io| io.close unless io.closed? }
  Dir.chdir(req['cwd']) if req['cwd']
  ENV.replace(req.fetch('env'))
  argv = req.fetch('argv')
  $0 = "puppet #{argv.first(1).join(' ')} (mozagent warm runner)"
  Puppet.settings.send(:clear_everything_for_tests)
  Facter.reset
  Facter.clear
  code = 0
  begin
    Puppet::Util::CommandLine.new('puppet', argv).execute
  rescue SystemExit => e
    code = e.status
  rescue Exception => e # rubocop:disable Lint/RescueException -- as a bare puppet would end
    warn "Error: #{e.class}: #{e.message}"
    code = 1
  end
  begin
    $stdout.flush
    $stderr.flush
  rescue StandardError
    nil
  end
  exit!(code)
end

loop do
  unless IO.select([ctl], nil, nil, idle_exit)
    say(ctl, 'idle' => idle_exit)
    exit!(0)
  end
  data, _addr, _flags, *controls = ctl.recvmsg(MAX_MESSAGE, 0, nil, scm_rights: true)
  exit!(0) if data.nil? || data.empty? # the agent is gone
  ios = controls.flat_map { |c| c.respond_to?(:unix_rights) ? (c.unix_rights || []) : [] }
  begin
    req = JSON.parse(data)
    raise ArgumentError, 'fds do not match' unless req.fetch('fds').length == ios.length
  rescue StandardError => e
    ios.each(&:close)
    say(ctl, 'refused' => "#{e.class}: #{e.message}"[0, 2000])
    next
  end
  reader, writer = IO.pipe
  pid = fork { reader.close; run_child(req, ios, ctl, writer) }
  writer.close
  ios.each(&:close)
  reader.read(1) # after its setsid: a kill of its process group reaches it
  reader.close
  say(ctl, 'started' => pid)
  done_r, done_w = IO.pipe
  waiter = Thread.new do
    status = Process.wait2(pid)[1]
    done_w.syswrite('x')
    status
  end
  loop do
    ready, = IO.select([ctl, done_r])
    break if ready.include?(done_r)

    if ctl.recv(1, Socket::MSG_PEEK).to_s.empty?
      # The agent is gone mid-run: nothing of the run may outlive it.
      begin
        Process.kill(:KILL, -pid)
      rescue StandardError
        nil
      end
      exit!(1)
    end
    ctl.recv(MAX_MESSAGE) # nothing is asked during a run: dropped
  end
  status = waiter.value
  done_r.close
  done_w.close
  say(ctl, status.signaled? ? { 'signal' => status.termsig } : { 'exit' => status.exitstatus })
end
