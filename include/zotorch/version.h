// zotorch's version, for code that must tell releases apart.
#pragma once

#define ZOTORCH_VERSION_MAJOR 0
#define ZOTORCH_VERSION_MINOR 1
#define ZOTORCH_VERSION_PATCH 0
#define ZOTORCH_VERSION_STRING "0.1.0"
