// The backend decision (htp_probe.h): the device probe, then a pure rule.
#include "etlora/htp_probe.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

namespace etlora {

const char* const kHexagonDeviceNodes[3] = {"/dev/fastrpc-cdsp", "/dev/fastrpc-cdsp-secure",
                                            "/dev/adsprpc-smd"};

namespace {

constexpr const char* kSoc0Machine = "/sys/devices/soc0/machine";
constexpr const char* kSoc0SocId = "/sys/devices/soc0/soc_id";

// Qualcomm socinfo ids of the SoCs etlora exports HTP programs for (export's Soc enum).
// Source: the Linux kernel's include/dt-bindings/arm/qcom,ids.h (QCOM_ID_SM8550 519,
// QCOM_ID_SM8650 557, QCOM_ID_SM8750 618), the ids drivers/soc/qcom/socinfo.c reports as
// /sys/devices/soc0/soc_id; the three values agree across every kernel patch seen. Not
// checked on a device here. Variants with their own ids (SM8650P 577, QCS8550 603,
// QCM8550 604) are left out on purpose: whether a program compiled for the base SoC runs on
// them is not known, so they stay "unknown" and ETLORA_SOC decides.
struct SocId {
  long id;
  const char* name;
};
constexpr SocId kSocIds[] = {{519, "SM8550"}, {557, "SM8650"}, {618, "SM8750"}};

std::string trimmed(const std::string& text) {
  size_t begin = 0, end = text.size();
  while (begin < end && std::isspace(static_cast<unsigned char>(text[begin]))) ++begin;
  while (end > begin && std::isspace(static_cast<unsigned char>(text[end - 1]))) --end;
  return text.substr(begin, end - begin);
}

std::string upper(std::string text) {
  for (char& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return text;
}

// The first line of a small sysfs file, trimmed; nullopt when it cannot be read.
std::optional<std::string> read_line(const char* path) {
  std::ifstream file(path);
  if (!file) return std::nullopt;
  std::string line;
  std::getline(file, line);
  return trimmed(line.substr(0, 64));
}

// "SM" and four digits, then letters at most ("SM8650", "SM8650P").
bool reads_like_soc(const std::string& text) {
  if (text.size() < 6 || text.size() > 8 || upper(text.substr(0, 2)) != "SM") return false;
  for (size_t i = 2; i < 6; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(text[i]))) return false;
  }
  for (size_t i = 6; i < text.size(); ++i) {
    if (!std::isalpha(static_cast<unsigned char>(text[i]))) return false;
  }
  return true;
}

LibraryProbe probe_library(const char* name) {
  LibraryProbe probe{name, false, ""};
  dlerror();  // clear a stale message
  void* handle = dlopen(name, RTLD_LAZY | RTLD_LOCAL);
  if (handle != nullptr) {
    probe.loadable = true;
    dlclose(handle);
  } else {
    const char* error = dlerror();
    probe.error = error != nullptr ? error : "dlopen failed without a message";
  }
  return probe;
}

void find_soc(HtpFacts& facts) {
  if (const char* env = std::getenv("ETLORA_SOC"); env != nullptr && *env != '\0') {
    facts.soc = upper(trimmed(env));
    facts.soc_source = "ETLORA_SOC";
    return;
  }
  const std::optional<std::string> machine = read_line(kSoc0Machine);
  if (machine && reads_like_soc(*machine)) {
    facts.soc = upper(*machine);
    facts.soc_source = kSoc0Machine;
    return;
  }
  const std::optional<std::string> soc_id = read_line(kSoc0SocId);
  if (soc_id) {
    char* rest = nullptr;
    const long id = std::strtol(soc_id->c_str(), &rest, 10);
    const bool number = !soc_id->empty() && rest != nullptr && *rest == '\0';
    const std::string name = number ? soc_name_for_id(id) : "";
    if (!name.empty()) {
      facts.soc = name;
      facts.soc_source = std::string(kSoc0SocId) + " " + *soc_id;
      return;
    }
    facts.soc_source = std::string(kSoc0SocId) + " reads '" + *soc_id + "', not in etlora's table (" +
                       "519 SM8550, 557 SM8650, 618 SM8750)" +
                       (machine ? std::string(", ") + kSoc0Machine + " reads '" + *machine + "'" : "");
    return;
  }
  facts.soc_source = machine ? std::string(kSoc0Machine) + " reads '" + *machine + "' and " + kSoc0SocId +
                                   " is unreadable"
                             : std::string("no ") + kSoc0Machine + " or soc_id: not a Qualcomm SoC, or "
                                                                "hidden by the kernel";
}

std::string join(const std::vector<std::string>& parts, const char* separator) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? separator : "") + parts[i];
  return out;
}

std::string device_nodes_text() {
  return std::string(kHexagonDeviceNodes[0]) + ", " + kHexagonDeviceNodes[1] + ", " + kHexagonDeviceNodes[2];
}

}  // namespace

StatusOr<BackendRequest> parse_backend_request(const std::string& text) {
  if (text == "auto") return BackendRequest::kAuto;
  if (text == "xnnpack") return BackendRequest::kXnnpack;
  if (text == "htp") return BackendRequest::kHtp;
  return Status(StatusCode::kInvalidArgument,
                "backend: expected one of auto, xnnpack, htp, received '" + text + "'");
}

const char* backend_request_name(BackendRequest request) {
  switch (request) {
    case BackendRequest::kAuto:
      return "auto";
    case BackendRequest::kXnnpack:
      return "xnnpack";
    case BackendRequest::kHtp:
      return "htp";
  }
  return "?";
}

const char* backend_name(Backend backend) { return backend == Backend::kHtp ? "htp" : "xnnpack"; }

std::string BackendChoice::line() const { return std::string("backend: ") + backend_name(backend) + " (" + reason + ")"; }

std::string soc_name_for_id(long soc_id) {
  for (const SocId& entry : kSocIds) {
    if (entry.id == soc_id) return entry.name;
  }
  return "";
}

HtpFacts gather_htp_facts() {
  HtpFacts facts;
  facts.htp_library = probe_library("libQnnHtp.so");
  facts.system_library = probe_library("libQnnSystem.so");
  for (const char* node : kHexagonDeviceNodes) {
    struct stat info {};
    if (::stat(node, &info) == 0) {
      facts.dsp_device = node;
      break;
    }
  }
  find_soc(facts);
  return facts;
}

StatusOr<BackendChoice> choose_backend(BackendRequest requested, const HtpFacts& facts,
                                       const std::optional<HtpProgramFacts>& htp_program) {
  if (requested == BackendRequest::kXnnpack) return BackendChoice{Backend::kXnnpack, "xnnpack requested"};

  std::vector<std::string> problems, hints;
  if (!htp_program) {
    problems.push_back("no HTP program in the bundle");
    hints.push_back("export with --backend htp --soc " + (facts.soc.empty() ? std::string("SMxxxx") : facts.soc));
  } else {
    bool missing_library = false;
    for (const LibraryProbe* library : {&facts.htp_library, &facts.system_library}) {
      if (!library->loadable) {
        problems.push_back(library->name + " not loadable: " + library->error);
        missing_library = true;
      }
    }
    if (missing_library) {
      hints.push_back("put the QNN runtime libraries of the SDK that compiled the program (libQnnHtp.so, "
                      "libQnnSystem.so, libQnnHtpV*Stub.so) on LD_LIBRARY_PATH and the DSP skel on "
                      "ADSP_LIBRARY_PATH");
    }
    if (facts.dsp_device.empty()) {
      problems.push_back("no Hexagon DSP device node (" + device_nodes_text() + ")");
      hints.push_back("run on a Snapdragon device whose kernel exposes the Hexagon DSP");
    }
    const std::string program_soc = upper(htp_program->soc);
    if (facts.soc.empty()) {
      problems.push_back("device SoC unknown (" + facts.soc_source + "), program compiled for " + program_soc);
      hints.push_back("set ETLORA_SOC=" + program_soc + " if this device is one");
    } else if (upper(facts.soc) != program_soc) {
      problems.push_back("program compiled for " + program_soc + ", device is " + facts.soc);
      hints.push_back("re-export with --soc " + facts.soc);
    }
  }
  if (problems.empty()) {
    return BackendChoice{Backend::kHtp, "HTP program for " + upper(htp_program->soc) + " (" + htp_program->path +
                                            "), " + facts.htp_library.name + " and " + facts.system_library.name +
                                            " loadable, " + facts.dsp_device + ", SoC " + facts.soc + " from " +
                                            facts.soc_source};
  }
  if (requested == BackendRequest::kAuto) return BackendChoice{Backend::kXnnpack, join(problems, "; ")};
  return Status(StatusCode::kIncompatible,
                "backend htp: expected an HTP program this device can run, received: " + join(problems, "; ") +
                    " (hint: " + join(hints, "; ") + "; or backend auto runs the XNNPACK program on the CPU)");
}

}  // namespace etlora
