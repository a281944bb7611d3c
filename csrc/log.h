// mtprun's handling of llama.cpp's log: swallowed unless verbose; the last error lines are kept so
// that failures can name their cause.
#pragma once

#include <string>

// install the log callback (and initialise the llama.cpp backend once)
void log_install();
// forget the kept error text (at the start of an operation)
void log_clear();
// the most recent llama.cpp error line, trimmed, or ""
std::string log_last_error();
