# exitguardConfigVersion.cmake -- the version find_package(exitguard X.Y) sees.
#
# It is read from the installed header (include/exitguard/version.h), the one
# place the version is written, so the two can never disagree.  A request for
# X.Y is met by any installed release >= X.Y with the same major version: an
# extension built against these headers runs with any exitguard whose capsule
# has the same ABI and a table at least as large (eg_import() checks that at
# import time; see docs/api.md, "Versions").
set(_exitguard_header "${CMAKE_CURRENT_LIST_DIR}/../include/exitguard/version.h")
if(NOT EXISTS "${_exitguard_header}")
  set(PACKAGE_VERSION "0.0.0")
  set(PACKAGE_VERSION_UNSUITABLE TRUE)
  return()
endif()
file(STRINGS "${_exitguard_header}" _exitguard_lines
     REGEX "^#define EG_VERSION_STRING ")
string(REGEX REPLACE "^#define EG_VERSION_STRING \"([0-9]+\\.[0-9]+\\.[0-9]+)\".*" "\\1"
       PACKAGE_VERSION "${_exitguard_lines}")
unset(_exitguard_lines)
unset(_exitguard_header)

if(PACKAGE_FIND_VERSION AND PACKAGE_VERSION VERSION_LESS PACKAGE_FIND_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
elseif(PACKAGE_FIND_VERSION AND NOT PACKAGE_FIND_VERSION_MAJOR STREQUAL "")
  string(REGEX MATCH "^[0-9]+" _exitguard_major "${PACKAGE_VERSION}")
  if(_exitguard_major STREQUAL PACKAGE_FIND_VERSION_MAJOR)
    set(PACKAGE_VERSION_COMPATIBLE TRUE)
  else()
    set(PACKAGE_VERSION_COMPATIBLE FALSE)
  endif()
  unset(_exitguard_major)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
endif()
if(PACKAGE_FIND_VERSION AND PACKAGE_VERSION VERSION_EQUAL PACKAGE_FIND_VERSION)
  set(PACKAGE_VERSION_EXACT TRUE)
endif()
