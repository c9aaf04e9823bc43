"""Write the files of ``synthetic/``: the byte formats of real switch files whose sources
carry no licence (or real people's numbers), filled with 400 numbers and made-up callers.

Each file reproduces the format of a real file named in README.md beside it (columns,
quoting, time format, line ends, quirks), byte for byte where it matters: quoted text with
quotes doubled and bare integers in Asterisk's cdr_csv, a bare empty answer time, every
field quoted and nothing escaped in FreeSWITCH's, non-UTF-8 bytes in a caller's name,
``<systemname>-`` uniqueids after a restart, hang-up order, several records per call.
The same made-up calls (:data:`CALLS`) go into most files, so their expected outputs can
be read side by side. Run it again to rewrite them (``python tests/data/switches/synthesize.py``);
the output is fixed by this text alone.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).parent / "synthetic"
SHANGHAI = timezone(timedelta(hours=8))


@dataclass(frozen=True)
class Call:
    """A made-up call: times in Beijing time, numbers as the switch writes them."""

    caller: str
    called: str
    answer: str  # the phone the platform forwarded the call to ("" when never forwarded)
    start: str  # "2026-03-02 09:00:00", Beijing time
    ring: int
    talk: int
    disposition: str  # ANSWERED, NO ANSWER, BUSY, FAILED, CONGESTION
    name: str = ""
    billsec: int | None = None  # what the switch writes, when it is not the talk time

    @property
    def started(self) -> datetime:
        return datetime.strptime(self.start, "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI)

    @property
    def answered(self) -> datetime | None:
        return self.started + timedelta(seconds=self.ring) if self.disposition == "ANSWERED" else None

    @property
    def ended(self) -> datetime:
        return self.started + timedelta(seconds=self.ring + (self.talk if self.disposition == "ANSWERED" else 0))

    @property
    def written_billsec(self) -> int:
        return self.billsec if self.billsec is not None else (self.talk if self.disposition == "ANSWERED" else 0)


#: The calls: every caller form a 400 number sees, every called form, the dispositions,
#: an off-peak call, a call abroad, a number nobody owns, and the times no call has.
CALLS: tuple[Call, ...] = (
    Call("13800138000", "4008001234", "01088886666", "2026-03-02 09:00:00", 5, 125, "ANSWERED", "张三"),
    Call("+8613912345678", "4008001234", "01088886666", "2026-03-02 09:10:00", 8, 61, "ANSWERED", "李四, 销售部"),
    Call("862161234567", "4008001234", "01088886666", "2026-03-02 09:20:00", 3, 300, "ANSWERED", 'Smith "JJ", John'),
    Call("62345678", "4008001234", "01088886666", "2026-03-02 09:30:00", 4, 45, "ANSWERED", "王五"),
    Call("anonymous", "4008001234", "01088886666", "2026-03-02 10:00:00", 6, 90, "ANSWERED", "anonymous"),
    Call("", "4007003333", "075512345678", "2026-03-02 10:05:00", 7, 200, "ANSWERED"),
    Call("1862831****", "4007003333", "075512345678", "2026-03-02 10:10:00", 5, 30, "ANSWERED", "赵六"),
    Call(" 075587654321", "+864007003333", "075512345678", "2026-03-02 10:20:00", 4, 180, "ANSWERED", "孙七"),
    Call("13800138000", "864001302468", "13912345678", "2026-03-02 11:00:00", 9, 600, "ANSWERED", "张三"),
    Call("02161234567", "04001302468", "13912345678", "2026-03-02 11:30:00", 2, 75, "ANSWERED", "周八"),
    Call("+14155550123", "4001302468", "13912345678", "2026-03-02 12:00:00", 10, 240, "ANSWERED", "Alice O'Neil"),
    Call("13800138000", "4008001234", "01088886666", "2026-03-02 22:30:00", 5, 600, "ANSWERED", "张三"),
    Call("13912345678", "4009999999", "01088886666", "2026-03-02 13:00:00", 5, 60, "ANSWERED", "吴九"),
    Call("075512345678", "4008001234", "", "2026-03-02 14:00:00", 30, 0, "NO ANSWER", "郑十"),
    Call("anonymous", "4008001234", "", "2026-03-02 14:05:00", 25, 0, "NO ANSWER", "anonymous"),
    Call("02087654321", "4007003333", "075512345678", "2026-03-02 14:10:00", 2, 0, "BUSY", "冯一"),
    Call("1001", "4007003333", "", "2026-03-02 14:15:00", 0, 0, "FAILED", "Extension 1001"),
    Call("13800138000", "4001302468", "", "2026-03-02 14:20:00", 1, 0, "CONGESTION", "张三"),
    Call("13800138000", "4008001234", "01088886666", "2026-03-02 15:00:00", 5, 125, "ANSWERED", "张三", billsec=1250),
    Call("13800138000", "4008001234", "01088886666", "2100-03-02 15:30:00", 5, 60, "ANSWERED", "张三"),
)


def _utc(instant: datetime | None) -> str:
    return "" if instant is None else instant.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _local(instant: datetime | None) -> str:
    return "" if instant is None else instant.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def _q(text: str) -> str:
    """A field as cdr_csv.c's append_string writes it: quoted, quotes doubled."""
    return '"' + text.replace('"', '""') + '"'


# --------------------------------------------------------------------------- Asterisk


def _asterisk_fields(call: Call, uniqueid: str, *, channel: str, dstchannel: str, lastapp: str = "Dial",
                     lastdata: str | None = None, userfield: str | None = None, local: bool = False) -> list[str]:
    """The 16 base columns + uniqueid + userfield, as cdr_csv writes them (times UTC)."""
    time = _local if local else _utc
    answered = call.answered
    return [
        _q(""), _q(call.caller), _q(call.called), _q("from-trunk"),
        _q(f'"{call.name}" <{call.caller}>' if call.name else f"<{call.caller}>" if call.caller else ""),
        _q(channel), _q(dstchannel if answered else ""), _q(lastapp),
        _q(lastdata if lastdata is not None else (f"SIP/ct-out/{call.answer},60,tT" if call.answer else "")),
        _q(time(call.started)), "" if answered is None else _q(time(answered)), _q(time(call.ended)),
        str(int((call.ended - call.started).total_seconds())), str(call.written_billsec),
        _q(call.disposition), _q("DOCUMENTATION"), _q(uniqueid),
        _q(call.answer if userfield is None else userfield),
    ]  # fmt: skip


def _epoch(call: Call) -> int:
    return int(call.started.timestamp())


def asterisk_18() -> bytes:
    """The format of a FreePBX/Asterisk Master.csv with the shipped cdr.conf (18 columns,
    UTC): karthik0112/synk_bug, BugaDM/TelephonySwitching, simularent (README.md)."""
    lines = []
    for n, call in enumerate(CALLS):
        uid = f"{_epoch(call)}.{n * 7}"
        chan, dst = f"SIP/ct-bj-{n:08x}", f"SIP/ct-out-{n + 100:08x}"
        if n == 3:  # userfield not set: the number Dial was given is the answering phone
            lines.append(_asterisk_fields(call, uid, channel=chan, dstchannel=dst, userfield=""))
            continue
        if n == 8:
            # FreePBX follow-me: a Local leg that rang 0 s and was never answered, then the
            # real leg, both with the channel's uniqueid; and a Busy() record after it.
            leg = replace(call, disposition="NO ANSWER", talk=0, ring=1)
            lines.append(_asterisk_fields(leg, uid, channel=chan, dstchannel="Local/FMGL-13912345678@from-internal-00000001;1",
                                          lastdata="Local/FMGL-13912345678@from-internal,,trIb(func-apply-sipheaders^s^1)",
                                          userfield=""))  # fmt: skip
            lines.append(_asterisk_fields(call, uid, channel=chan, dstchannel=dst))
            continue
        if n == 13:  # an unanswered call to VoiceMail: NO ANSWER with an answer time and billsec
            vm = _asterisk_fields(call, uid, channel=chan, dstchannel="", lastapp="VoiceMail", lastdata="1001@default,u")
            vm[10] = _q(_utc(call.started + timedelta(seconds=call.ring)))
            vm[13] = "9"
            lines.append(vm)
            continue
        if n == 15:  # Playback with a quoted, comma'd argument
            lines.append(_asterisk_fields(call, uid, channel=chan, dstchannel=dst, lastapp="Playback",
                                          lastdata='"busy-tone",noanswer'))  # fmt: skip
            continue
        lines.append(_asterisk_fields(call, uid, channel=chan, dstchannel=dst))
    # A call-file originated call: empty src, a clid without <>, accountcode set.
    origin = Call("", "4008001234", "01088886666", "2026-03-02 16:00:00", 3, 20, "ANSWERED")
    fields = _asterisk_fields(origin, f"{_epoch(origin)}.0", channel="Local/s@callback-00000009;1", dstchannel="SIP/ct-out-1")
    fields[0], fields[4] = _q("100"), _q("apptel")
    lines.append(fields)
    # Records are written at hang-up: a long call hung up after later ones started.
    lines[0], lines[1] = lines[1], lines[0]
    return "".join(",".join(f) + "\n" for f in lines).encode()


def asterisk_21() -> bytes:
    """The format of mineevburyat/dj-asterisk-cdr's Master.csv: 21 columns (newcdrcolumns),
    a garbled caller name in bytes that are not UTF-8, a restart with systemname set."""
    out = io.BytesIO()
    sequence = 0
    for n, call in enumerate(CALLS[:12]):
        restarted = n >= 6  # from here on the uniqueids carry the systemname
        uid = (f"bj400-{_epoch(call)}.{n}" if restarted else f"{_epoch(call)}.{n}")
        fields = _asterisk_fields(call, uid, channel=f"SIP/ct-bj-{n:08x}", dstchannel=f"SIP/ct-out-{n:08x}")
        if restarted and n == 6:
            sequence = 0
        line = ",".join([*fields, _q(""), _q(uid), str(sequence)]).encode()
        if n in (1, 2, 7):  # the trunk's caller name cut in the middle of a character
            name = call.name.encode()
            line = line.replace(name, name[:4] + b"\xa5\xa5", 1) if name else line
        out.write(line + b"\n")
        sequence += 3
    return out.getvalue()


def asterisk_16() -> bytes:
    """cdr_csv with its module defaults (a [csv] section without usegmtime, loguniqueid,
    loguserfield): 16 columns, the host's local time (here Beijing)."""
    lines = []
    for n, call in enumerate(CALLS[:8]):
        fields = _asterisk_fields(call, "", channel=f"SIP/ct-bj-{n:08x}", dstchannel=f"SIP/ct-out-{n:08x}", local=True)
        lines.append(",".join(fields[:16]))
    return "".join(line + "\n" for line in lines).encode()


def asterisk_custom_19() -> bytes:
    """Asterisk cdr_custom with the sample mapping (KelySaina/cdr's Master.csv): clid first,
    duration and billsec quoted, an unanswered answer time quoted empty, sequence bare;
    the host's local time (Beijing)."""
    lines = []
    for n, call in enumerate(CALLS[:10]):
        answered = call.answered
        fields = [
            _q(f'"{call.name}" <{call.caller}>'), _q(call.caller), _q(call.called), _q("from-trunk"),
            _q(f"PJSIP/ct-bj-{n:08x}"), _q(f"PJSIP/ct-out-{n:08x}" if answered else ""), _q("Dial"),
            _q(f"PJSIP/{call.answer}@ct-out" if call.answer else ""), _q(_local(call.started)), _q(_local(answered)),
            _q(_local(call.ended)), _q(str(int((call.ended - call.started).total_seconds()))),
            _q(str(call.written_billsec)), _q(call.disposition), _q("DOCUMENTATION"), _q(""),
            _q(f"{_epoch(call)}.{n * 3}"), _q(call.answer), str(n * 2),
        ]  # fmt: skip
        lines.append(",".join(fields))
    return "".join(line + "\n" for line in lines).encode()


# -------------------------------------------------------------------------- FreeSWITCH

_CAUSE = {"ANSWERED": "NORMAL_CLEARING", "NO ANSWER": "ORIGINATOR_CANCEL", "BUSY": "USER_BUSY",
          "FAILED": "CALL_REJECTED", "CONGESTION": "NORMAL_CIRCUIT_CONGESTION"}  # fmt: skip


def _fs(call: Call, uuid: str, bleg: str = "", *, destination: str | None = None, last_arg: str | None = None) -> str:
    """One line of mod_cdr_csv's "example" template: every field between quotes, nothing
    escaped (a name with a quote or a comma is written as it is), local time."""
    values = [
        call.name, call.caller, call.called if destination is None else destination, "public", _local(call.started),
        _local(call.answered), _local(call.ended), str(int((call.ended - call.started).total_seconds())),
        str(call.written_billsec), _CAUSE[call.disposition], uuid, bleg, "", "PCMA" if call.answered else "",
        "PCMA" if call.answered else "",
    ]  # fmt: skip
    if last_arg is not None:
        values.append(last_arg)
    return ",".join(f'"{value}"' for value in values)


def freeswitch_a() -> bytes:
    """The vanilla "example" template with legs=a (nrahnemoon, amitsrepo, spicyramen...)."""
    return "".join(_fs(call, f"5b9f{n:04x}-2c1e-4a7d-9e6f-{n:012x}", f"7c2e{n:04x}-8d4f-4b6a-a1c3-{n:012x}" if call.answered else "") + "\n"
                   for n, call in enumerate(CALLS)).encode()  # fmt: skip


def freeswitch_ab() -> bytes:
    """The example template with legs=ab (raspberry-pi-maker's page): each bridged call's
    B-leg, written first as it hangs up first, then its A-leg naming it in bleg_uuid."""
    lines = []
    for n, call in enumerate(CALLS[:6]):
        a, b = f"a0c1{n:04x}-2c1e-4a7d-9e6f-{n:012x}", f"b1d2{n:04x}-8d4f-4b6a-a1c3-{n:012x}"
        if call.answered is not None:
            lines.append(_fs(call, b, destination=call.answer))
        lines.append(_fs(call, a, b if call.answered is not None else ""))
    return "".join(line + "\n" for line in lines).encode()


def freeswitch_answering() -> bytes:
    """The answering-number template (schemas/profiles/freeswitch-answering.toml): the
    example's 15 columns and ${last_arg}, the bridge's dial string."""
    return "".join(
        _fs(call, f"c3e4{n:04x}-2c1e-4a7d-9e6f-{n:012x}", last_arg=f"sofia/gateway/ct-bj/{call.answer}" if call.answer else "")
        + "\n"
        for n, call in enumerate(CALLS)
    ).encode()


# --------------------------------------------------------------------- VOS3000, 400 export

#: The 52 columns of a VOS3000 e_cdr CSV export, as a third-party importer lists them
#: (staging FORMATS.md 4.1 b).
VOS_COLUMNS = (
    "callere164,calleraccesse164,calleee164,calleeaccesse164,callerip,callercodec,callergatewayid,"
    "callerproductid,callertogatewaye164,callertype,calleeip,calleecodec,calleegatewayid,calleeproductid,"
    "calleetogatewaye164,calleetype,billingmode,calllevel,agentfeetime,starttime,stoptime,callerpdd,"
    "calleepdd,holdtime,callerareacode,feetime,fee,tax,suitefee,suitefeetime,incomefee,incometax,"
    "customeraccount,customername,calleeareacode,agentfee,agenttax,agentsuitefee,agentsuitefeetime,"
    "agentaccount,agentname,flowno,softswitchname,softswitchcallid,callercallid,calleroriginalcallid,"
    "rtpforward,enddirection,endreason,billingtype,cdrlevel,agentcdr_id"
).split(",")


def vos3000() -> bytes:
    """A VOS3000 e_cdr export: a header, epoch-millisecond times, talk seconds, the
    dialled number after the switch's routing prefix 17909."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(VOS_COLUMNS)
    for n, call in enumerate(CALLS):
        values = dict.fromkeys(VOS_COLUMNS, "0")
        talk = call.written_billsec
        values.update(
            callere164=call.caller.strip(), calleee164="17909" + call.called.lstrip("+").removeprefix("86"),
            calleetogatewaye164=call.answer, starttime=str(int(call.started.timestamp() * 1000) + 500 * (n % 2)),
            stoptime=str(int(call.ended.timestamp() * 1000) + 500 * (n % 2)), holdtime=str(talk),
            feetime=str(-(-talk // 60) * 60), flowno=str(88000100 + n), softswitchname="VOS-BJ",
            customeraccount="A400", customername="四百客户", enddirection=str(n % 3),
            endreason="200" if call.answered else "-69", callerip="10.1.2.3", calleeip="10.4.5.6",
        )  # fmt: skip
        writer.writerow([values[c] for c in VOS_COLUMNS])
    return out.getvalue().encode()


def platform_export() -> bytes:
    """A 400 platform's call-record export, saved by Excel on Chinese Windows: GBK, a
    Chinese header, HH:MM:SS talk time, results in words, ", " after some fields and a
    blank line at the end (schemas/profiles/platform-400-export.toml)."""
    results = {"ANSWERED": "已接通", "NO ANSWER": "未接听", "BUSY": "用户忙", "FAILED": "呼叫失败", "CONGESTION": "呼叫失败"}
    rows = ["话单编号,主叫号码,400号码,接听号码,呼叫时间,接通时间,挂机时间,通话时长,呼叫结果"]
    for n, call in enumerate(CALLS):
        talk = call.written_billsec
        rows.append(", ".join([
            f"HD{20260302000 + n}", call.caller.strip(), call.called, call.answer, _local(call.started),
            _local(call.answered), _local(call.ended), f"{talk // 3600:02d}:{talk % 3600 // 60:02d}:{talk % 60:02d}",
            results[call.disposition],
        ]))  # fmt: skip
    rows.append("")
    return ("\r\n".join(rows) + "\r\n").encode("gbk")


FILES = {
    "asterisk-18col-utc-Master.csv": asterisk_18,
    "asterisk-21col-newcdrcolumns-nonutf8-Master.csv": asterisk_21,
    "asterisk-16col-localtime-Master.csv": asterisk_16,
    "asterisk-cdr_custom-19col-Master.csv": asterisk_custom_19,
    "freeswitch-example-legs_a-Master.csv": freeswitch_a,
    "freeswitch-example-legs_ab-Master.csv": freeswitch_ab,
    "freeswitch-answering-Master.csv": freeswitch_answering,
    "vos3000-e_cdr-export.csv": vos3000,
    "platform-400-export-gbk.csv": platform_export,
}


if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    for name, make in FILES.items():
        (HERE / name).write_bytes(make())
        print(name)
