#!/bin/bash
# Runs INSIDE the booted Debian 12 container (scenario.service, after multi-user.target),
# never on the host. Each check appends "ok NAME" or "FAIL NAME: detail" to
# /results/results-<boot>.txt (a directory of the host bound in); the host asserts them.
# `info NAME VALUE` lines carry measurements. The unit powers the container off after.
set -u
export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive
BOOT=$(cat /root/guardd-test/boot)
OUT=/results/results-$BOOT.txt
: >"$OUT"

ok() { echo "ok $1" >>"$OUT"; }
fail() { echo "FAIL $1: $2" >>"$OUT"; }
info() { echo "info $1 $2" >>"$OUT"; }
# check NAME CMD...: CMD exits 0.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$name"; else fail "$name" "$(printf '%s' "$out" | tail -n 5 | tr '\n' '|')"; fi
}
# wait_for SECONDS CMD...: poll CMD (bounded) until it exits 0.
wait_for() {
    local end=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 0.2
    done
}
journal_has() { journalctl -b --no-pager -q "${@:2}" | grep -q -- "$1"; }
same() { [ "$1" = "$2" ] || { echo "expected [$2], got [$1]"; return 1; }; }
mode_of() { stat -c '%a %U %G' "$1"; }
as() { local user=$1; shift; runuser -u "$user" -- "$@"; }

# drain_while_running SCOPE RELEASE_FILE JOB_LOG NAME: `guardctl on SCOPE --wait` is
# still waiting while the job runs, and returns 0 once it has finished.
drain_while_running() {
    local scope=$1 release=$2 log=$3 name=$4 drain rc
    guardctl on "$scope" --wait --timeout 60s >/dev/null 2>&1 &
    drain=$!
    sleep 2
    check "drain_${name}_waits" kill -0 "$drain"
    touch "$release"
    wait "$drain"
    rc=$?
    check "drain_${name}_returns_0" same "$rc" 0
    check "drain_${name}_job_finished" grep -qx done "$log"
}

write_config() {
    cat >/etc/guardd/config.yaml <<EOF
lock_dir: /var/lib/guardd
runtime_dir: /run/guardd
scopes:
  shop: {}
  nightly: {}
  batch: {}
  stubborn: {}
  keep: {}
$1
control:
  mode: "0660"
  group: guardd
http:
  listen: ["127.0.0.1:8089"]
hooks:
  on_enter:
    - ["/bin/sh", "-c", "echo \"\$GUARD_SCOPE\" >> /srv/hooks/entered; if touch /srv/outside/x 2>/dev/null; then echo wrote >> /srv/hooks/outside; else echo denied >> /srv/hooks/outside; fi"]
    - ["/bin/systemctl", "start", "hook-probe.service"]
EOF
}

boot1() {
    # ---------------------------------------------------------------- install
    local start=$SECONDS
    check install dpkg -i /root/guardd-test/guardd.deb
    info install_seconds $((SECONDS - start))
    check commands_on_cron_path env -i PATH=/usr/bin:/bin sh -c \
        'command -v guardd && command -v guardctl && command -v guard-run'
    check unit_enabled systemctl is-enabled guardd
    wait_for 20 systemctl is-active guardd
    check unit_active systemctl is-active guardd
    check runtime_unit_active systemctl is-active guardd-runtime
    check type_notify same "$(systemctl show -P Type guardd)" notify
    check status_line sh -c 'systemctl status guardd --no-pager | grep "Status: \""'
    check group_exists getent group guardd
    check lock_dir_mode same "$(mode_of /var/lib/guardd)" "2775 root guardd"
    check runtime_dir_mode same "$(mode_of /run/guardd)" "755 root guardd"
    check default_run_lock same "$(mode_of /run/guardd/default.run)" "644 root guardd"
    check socket_mode same "$(mode_of /run/guardd/guardd.sock)" "660 root guardd"
    check shipped_config_valid guardd --check-config
    check config_is_conffile sh -c "dpkg-query -W -f='\${Conffiles}' guardd | grep /etc/guardd/config.yaml"
    check documentation sh -c 'doc=$(systemctl show -P Documentation guardd) &&
        [ "$doc" = file:/usr/share/doc/guardd/README.md ] && test -s /usr/share/doc/guardd/README.md &&
        test -s /usr/share/doc/guardd/examples/guardd.service.d/hooks.conf'
    local score
    score=$(systemd-analyze security guardd.service --no-pager 2>&1 |
        sed -n 's/.*Overall exposure level for guardd.service: \([0-9.]*\).*/\1/p')
    info security_exposure "${score:-none}"
    check security_at_most_2 awk -v s="${score:-99}" 'BEGIN { exit !(s + 0 <= 2.0) }'
    check verify_units sh -c 'out=$(systemd-analyze verify --man=no guardd.service guardd-runtime.service 2>&1); echo "$out"; [ -z "$out" ]'

    # ------------------------------------------- the test config, the hook drop-in
    mkdir -p /srv/hooks /srv/outside /srv/out
    chown www-data:www-data /srv/out
    write_config ""
    # What a hook can still do from inside the sandbox: ask systemd to start a unit.
    cat >/etc/systemd/system/hook-probe.service <<'EOF'
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo started >> /srv/outside/probe'
EOF
    mkdir -p /etc/systemd/system/guardd.service.d
    sed 's#^ReadWritePaths=.*#ReadWritePaths=/srv/hooks#' \
        /usr/share/doc/guardd/examples/guardd.service.d/hooks.conf \
        >/etc/systemd/system/guardd.service.d/hooks.conf
    check verify_with_dropin sh -c 'out=$(systemd-analyze verify --man=no guardd.service 2>&1); echo "$out"; [ -z "$out" ]'
    systemctl daemon-reload
    check restart_with_test_config systemctl restart guardd
    # The cron jobs below find nightly in maintenance at their first minute.
    check guardctl_on_as_root guardctl on nightly --reason "nightly off"
    # A stand-in MTA: what cron would mail is kept, so that a check can show it.
    printf '#!/bin/sh\ncat >> /srv/out/mail\n' >/usr/sbin/sendmail
    chmod 755 /usr/sbin/sendmail
    cat >/etc/cron.d/guardd-test <<'EOF'
# No PATH line: cron's default PATH (/usr/bin:/bin) must find guard-run.
* * * * * www-data guard-run --scope nightly -- /bin/sh -c 'echo ran >> /srv/out/cron-a'
* * * * * www-data guard-run --scope batch -- /bin/sh -c 'echo start >> /srv/out/b; i=0; while [ ! -e /srv/out/release-b ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done; echo done >> /srv/out/b'
* * * * * www-data guard-run --scope stubborn -- /bin/sh -c 'echo $$ >> /srv/out/c; exec sleep 300'
EOF

    # ------------------------------------------------------------ hooks (drop-in)
    guardctl on shop --reason hooks >/dev/null
    wait_for 10 grep -qx shop /srv/hooks/entered
    check hook_writes_dropin_path grep -qx shop /srv/hooks/entered
    check hook_runs_systemctl wait_for 10 test -s /srv/outside/probe
    # Every hook run so far (nightly's too) was refused outside the drop-in's paths.
    check hook_sandboxed_elsewhere sh -c 'grep -x denied /srv/hooks/outside && ! grep wrote /srv/hooks/outside'
    guardctl off shop >/dev/null

    # ------------------------------------------------------------------- reload
    local pid
    pid=$(systemctl show -P MainPID guardd)
    write_config "  late: {}"
    check reload systemctl reload guardd
    check reload_creates_run_lock wait_for 10 test -e /run/guardd/late.run
    check reload_same_pid same "$(systemctl show -P MainPID guardd)" "$pid"
    echo "scopes: [this is not" >>/etc/guardd/config.yaml
    systemctl reload guardd
    sleep 1
    check invalid_reload_keeps_running systemctl is-active guardd
    check invalid_reload_same_pid same "$(systemctl show -P MainPID guardd)" "$pid"
    check invalid_reload_logged sh -c 'journalctl -b -u guardd --no-pager | grep "reload failed, keeping the running configuration"'
    check reload_logged sh -c 'journalctl -b -u guardd --no-pager | grep "configuration reloaded from /etc/guardd/config.yaml"'
    check invalid_reload_old_config_in_use python3 /root/guardd-test/guardd_query.py scope late

    # ---------------------------------------------- a config error at start: no loop
    systemctl restart guardd
    sleep 4
    check start_error_failed same "$(systemctl show -P ActiveState guardd)" failed
    check start_error_status_2 same "$(systemctl show -P ExecMainStatus guardd)" 2
    check start_error_no_restart same "$(systemctl show -P NRestarts guardd)" 0
    write_config ""
    systemctl reset-failed guardd
    check start_after_fix systemctl start guardd

    # ------------------------------------------------------------------ watchdog
    cat >/etc/systemd/system/guardd.service.d/zz-watchdog.conf <<'EOF'
[Service]
WatchdogSec=2s
EOF
    systemctl daemon-reload
    systemctl restart guardd
    pid=$(systemctl show -P MainPID guardd)
    kill -STOP "$pid"
    wait_for 30 sh -c "[ \"\$(systemctl show -P MainPID guardd)\" != $pid ] && systemctl is-active guardd"
    check watchdog_restarted sh -c "[ \"\$(systemctl show -P MainPID guardd)\" != $pid ] && systemctl is-active guardd"
    check watchdog_logged sh -c 'journalctl -b -u guardd --no-pager | grep -i "watchdog timeout"'
    rm /etc/systemd/system/guardd.service.d/zz-watchdog.conf
    systemctl daemon-reload
    systemctl restart guardd

    # ------------------------------------------------ timer with ExecCondition
    cat >/etc/systemd/system/guard-tick.service <<'EOF'
[Service]
Type=oneshot
User=www-data
ExecCondition=/usr/bin/guard-run --check --scope shop
ExecStart=/usr/bin/guard-run --scope shop --when-on fail -- /bin/sh -c 'echo tick >> /srv/out/tick'
EOF
    cat >/etc/systemd/system/guard-tick.timer <<'EOF'
[Timer]
OnActiveSec=1s
OnUnitActiveSec=2s
AccuracySec=100ms
EOF
    systemctl daemon-reload
    guardctl on shop >/dev/null
    systemctl start guard-tick.timer
    wait_for 20 journal_has "Skipped due to 'exec-condition'" -u guard-tick.service
    check timer_skipped_in_journal journal_has "Skipped due to 'exec-condition'" -u guard-tick.service
    check timer_did_not_run test ! -e /srv/out/tick
    guardctl off shop >/dev/null
    check timer_runs_after_off wait_for 20 test -s /srv/out/tick
    systemctl stop guard-tick.timer

    # ------------------------------------------------- users in and out of guardd
    useradd --no-create-home --groups guardd ops
    useradd --no-create-home intruder
    check member_on as ops guardctl on shop --reason "by ops"
    check member_status sh -c 'runuser -u ops -- guardctl status shop | grep shop'
    check member_jobs as ops guardctl jobs
    check member_off as ops guardctl off shop
    check member_on_wait as ops guardctl on shop --wait --timeout 10s
    as ops guardctl off shop >/dev/null 2>&1
    local err rc
    err=$(as intruder guardctl on shop 2>&1 >/dev/null)
    rc=$?
    check outsider_refused same "$rc" 1
    check outsider_one_line same "$(printf '%s\n' "$err" | wc -l)" 1
    check outsider_told_who_may sh -c "printf '%s' \"\$1\" | grep -q 'members of the group guardd may switch maintenance'" _ "$err"
    info outsider_message "$err"
    check outsider_no_flag test ! -e /var/lib/guardd/shop.lock
    check outsider_no_traceback sh -c "! printf '%s' \"\$1\" | grep -q Traceback" _ "$err"

    # -------------------------------------------------------------------- cron
    # Jobs B (batch) and C (stubborn) start at the first minute; A (nightly) is skipped.
    wait_for 75 test -s /srv/out/b
    check cron_started_jobs test -s /srv/out/c
    sleep 1
    check cron_skipped_not_run test ! -e /srv/out/cron-a
    check cron_skip_in_journal sh -c 'journalctl -b --no-pager -t guard-run | grep nightly | grep skipped'
    # One minute has passed for cron: one line for the one skipped run.
    check cron_skip_one_line same "$(journalctl -b --no-pager -t guard-run | grep nightly | grep -c skipped)" 1
    check cron_job_listed sh -c 'guardctl jobs batch | grep release-b'
    # guardd itself (sandboxed: ProtectProc=invisible, CAP_SYS_PTRACE) sees www-data's job.
    check guardd_sees_cron_job python3 /root/guardd-test/guardd_query.py job batch
    drain_while_running batch /srv/out/release-b /srv/out/b cron
    # Skips and drained jobs mail nothing. (Checked before --then term below: cron's
    # own shell, outside the job's process group, then says "Terminated", and cron
    # mails that, as it does for any job killed by a signal.)
    check cron_no_mail sh -c 'if [ -s /srv/out/mail ]; then grep -v "^[A-Z][-A-Za-z]*: " /srv/out/mail; exit 1; fi'
    local cpid
    cpid=$(head -n 1 /srv/out/c)
    check term_stubborn_job guardctl on stubborn --wait --timeout 2s --then term --grace 2s
    check term_job_gone wait_for 5 sh -c "! kill -0 $cpid"
    guardctl off nightly >/dev/null
    check cron_runs_after_off wait_for 70 test -s /srv/out/cron-a

    # /metrics (python3-prometheus-client from Debian), asked from loopback.
    check metrics_served sh -c 'python3 -c "
import urllib.request
body = urllib.request.urlopen(\"http://127.0.0.1:8089/metrics\", timeout=5).read().decode()
assert \"guardd_scope_maintenance\" in body and \"process_\" in body, body[:300]
"'
    # The sandbox (MemoryDenyWriteExecute, the call filter) left inotify working.
    check sandbox_keeps_inotify sh -c '! journalctl -b -u guardd --no-pager | grep -E "inotify unavailable|polling /"'
    # ... and let guardd raise its open-files limit (setrlimit is in @resources).
    check sandbox_keeps_nofile sh -c '! journalctl -b -u guardd --no-pager | grep "cannot raise the open-files limit"'

    # ------------------------------------------------------- before the reboot
    guardctl on keep --reason "kept over a reboot" >/dev/null
    # guardd must not start in the next boot before the cron job does.
    systemctl disable guardd 2>/dev/null
    check flags_before_reboot test -e /var/lib/guardd/keep.lock
}

boot2() {
    check runtime_dir_recreated same "$(mode_of /run/guardd)" "755 root guardd"
    check default_run_lock_recreated same "$(mode_of /run/guardd/default.run)" "644 root guardd"
    check scope_run_lock_recreated same "$(mode_of /run/guardd/nightly.run)" "644 root guardd"
    check guardd_not_started same "$(systemctl is-active guardd)" inactive
    check flag_kept test -e /var/lib/guardd/keep.lock
    check flag_kept_status sh -c 'guardctl status keep | grep -i "kept over a reboot"'
    # The job (www-data, started by cron) runs before guardd has ever started.
    wait_for 75 test -s /srv/out/d.pid
    check cron_job_before_guardd test -s /srv/out/d.pid
    check guardd_still_not_started same "$(systemctl is-active guardd)" inactive
    systemctl start guardd
    check jobs_sees_early_job sh -c 'guardctl jobs nightly | grep release-d'
    check guardd_sees_early_job python3 /root/guardd-test/guardd_query.py job nightly
    drain_while_running nightly /srv/out/release-d /srv/out/d early

    # ---------------------------------------------- upgrade (reinstall), then purge
    local pid
    pid=$(systemctl show -P MainPID guardd)
    check reinstall dpkg -i /root/guardd-test/guardd.deb
    check reinstall_keeps_config grep -q "stubborn" /etc/guardd/config.yaml
    check reinstall_restarts sh -c "[ \"\$(systemctl show -P MainPID guardd)\" != $pid ] && systemctl is-active guardd"
    check purge dpkg --purge guardd
    check purge_etc test ! -e /etc/guardd
    check purge_var_lib test ! -e /var/lib/guardd
    check purge_run test ! -e /run/guardd
    check purge_commands test ! -e /usr/bin/guardd
    check purge_keeps_group getent group guardd
}

"boot$BOOT"
echo "done" >>"$OUT"
