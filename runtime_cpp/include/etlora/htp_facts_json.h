// The device facts (htp_probe.h HtpFacts) as JSON: the seven keys written once,
// for the runner's test hook (a facts file) and the Python binding (a dict).
#pragma once

#include <string>

#include "etlora/htp_probe.h"
#include "etlora/status.h"

namespace etlora {

// {"htp_library_loadable": bool, "htp_library_error": str, "system_library_loadable": bool,
//  "system_library_error": str, "dsp_device": str, "soc": str, "soc_source": str}
std::string htp_facts_to_json(const HtpFacts& facts);

// The same object back: every key present with its type, no other key. `where`
// starts each error ("facts", "ETLORA_TEST_HTP_FACTS=path").
StatusOr<HtpFacts> htp_facts_from_json(const std::string& text, const std::string& where);

// htp_facts_from_json of a file of at most 64 KiB.
StatusOr<HtpFacts> read_htp_facts_file(const std::string& path, const std::string& where);

}  // namespace etlora
