// Which program runs, decided before anything is loaded.
//
// A bundle may carry an HTP program (model_htp.pte, for the Hexagon NPU of one
// Snapdragon SoC) beside the XNNPACK program (model.pte, any CPU). ExecuTorch's
// QnnBackend does not refuse a payload it cannot read: it crashes the process
// (SIGSEGV, ../shared/NOTES.md "Qualcomm HTP"). So the fallback is never
// decided by trying: the device is probed first, and a program goes to
// QnnBackend only when choose_backend returned kHtp for it.
//
// Two halves, so that every answer can be tested on a machine without an NPU:
//   gather_htp_facts()  reads this device (libraries, DSP device node, SoC);
//   choose_backend()    a pure function of the request, those facts and the
//                       bundle's HTP program entry.
//
// Decision (first matching row; "device problems" are every one of: libQnnHtp.so
// not loadable, libQnnSystem.so not loadable, no Hexagon DSP device node, SoC
// unknown, SoC different from the program's, joined by "; "):
//
//   requested | HTP program | device problems | result
//   ----------+-------------+-----------------+-----------------------------------------
//   xnnpack   |     any     |       any       | xnnpack ("xnnpack requested")
//   auto      |    none     |       any       | xnnpack ("no HTP program in the bundle")
//   auto      |   present   |     some        | xnnpack (the problems)
//   auto      |   present   |     none        | htp
//   htp       |   any row that would not give htp under auto | error Status, never a fallback
//   htp       |   present   |     none        | htp
//
// When the answer is htp, the HTP program runs in etlora::HtpSession
// (htp_session.h), the static-shape session that owns the KV cache on the host.
#pragma once

#include <optional>
#include <string>

#include "etlora/status.h"

namespace etlora {

enum class BackendRequest { kAuto, kXnnpack, kHtp };
enum class Backend { kXnnpack, kHtp };

// "auto" | "xnnpack" | "htp"; anything else is kInvalidArgument naming the choices.
StatusOr<BackendRequest> parse_backend_request(const std::string& text);
const char* backend_request_name(BackendRequest request);
const char* backend_name(Backend backend);  // "xnnpack" | "htp"

// The Hexagon FastRPC device nodes looked for, in this order.
extern const char* const kHexagonDeviceNodes[3];  // /dev/fastrpc-cdsp, /dev/fastrpc-cdsp-secure, /dev/adsprpc-smd

struct LibraryProbe {
  std::string name;        // "libQnnHtp.so"
  bool loadable = false;   // dlopen(name, RTLD_LAZY | RTLD_LOCAL) succeeded (then dlclose)
  std::string error;       // dlerror() text when it did not, else ""
};

// What this device offers the HTP program; read once by gather_htp_facts().
struct HtpFacts {
  LibraryProbe htp_library{"libQnnHtp.so", false, ""};
  LibraryProbe system_library{"libQnnSystem.so", false, ""};
  std::string dsp_device;  // the first of kHexagonDeviceNodes that exists, "" when none does
  std::string soc;         // "SM8650", "" when unknown
  // Where soc came from ("ETLORA_SOC", "/sys/devices/soc0/machine",
  // "/sys/devices/soc0/soc_id 557"), or why it is unknown.
  std::string soc_source;
};

// The bundle's HTP program as the decision needs it (etlora::Bundle::htp_program).
struct HtpProgramFacts {
  std::string soc;   // the SoC it was compiled for, e.g. "SM8650"
  std::string path;  // the file; never opened by the probe
};

struct BackendChoice {
  Backend backend = Backend::kXnnpack;
  std::string reason;  // one line: why this backend (what was missing when it is the fallback)
  // "backend: xnnpack (reason)", what etlora_runner and `etlora run` print.
  std::string line() const;
};

// Reads this device: dlopen of libQnnHtp.so and libQnnSystem.so (closed again;
// the dynamic linker's usual search: LD_LIBRARY_PATH, the system folders), the
// Hexagon device nodes, and the SoC: ETLORA_SOC when set (bring-up, or a kernel
// that hides it), else /sys/devices/soc0/machine when it reads like "SM8650",
// else /sys/devices/soc0/soc_id through a small table (htp_probe.cpp). Never fails:
// what cannot be read is an empty field with the reason beside it.
HtpFacts gather_htp_facts();

// The SoC name of a Qualcomm socinfo id (SM8550, SM8650, SM8750), or "" when the table lacks it.
std::string soc_name_for_id(long soc_id);

// The rule above. An error Status (kIncompatible) only when htp was requested
// and cannot run: expected -> received -> hint, naming everything missing.
StatusOr<BackendChoice> choose_backend(BackendRequest requested, const HtpFacts& facts,
                                       const std::optional<HtpProgramFacts>& htp_program);

}  // namespace etlora
