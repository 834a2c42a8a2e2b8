# exitguardConfig.cmake -- find_package(exitguard CONFIG) for CMake builds of
# CPython extensions (scikit-build-core finds it in site-packages by itself;
# plain CMake: -Dexitguard_DIR="$(python -m exitguard --cmakedir)").
#
# Gives:
#   exitguard::exitguard    INTERFACE target: the include folder holding
#                           exitguard.h, exitguard.hpp and the pybind11 and
#                           nanobind adapters.  Link it to your extension:
#                               target_link_libraries(ext PRIVATE exitguard::exitguard)
#                           It carries no library: extensions reach exitguard
#                           through its capsule (eg_import()), never by linking.
#   exitguard_INCLUDE_DIR   the same folder
#   exitguard_VERSION       the release of these headers (EG_VERSION_STRING)
#   exitguard_ABI_VERSION   the capsule table's ABI (EG_ABI_VERSION)
#
# The headers need Python's own (Python.h): the extension target has them
# already (Python_add_library, pybind11_add_module, nanobind_add_module).
# This folder sits inside the installed exitguard package, so the headers it
# points at are always those of the exitguard it belongs to.
get_filename_component(exitguard_INCLUDE_DIR "${CMAKE_CURRENT_LIST_DIR}/../include" ABSOLUTE)
if(NOT EXISTS "${exitguard_INCLUDE_DIR}/exitguard.h")
  set(exitguard_FOUND FALSE)
  set(exitguard_NOT_FOUND_MESSAGE
      "exitguard.h is missing from ${exitguard_INCLUDE_DIR}: reinstall exitguard")
  return()
endif()

# exitguard_VERSION comes from exitguardConfigVersion.cmake (find_package
# sets it); the ABI is read from the same header.
file(STRINGS "${exitguard_INCLUDE_DIR}/exitguard/version.h" _exitguard_abi
     REGEX "^#define EG_ABI_VERSION ")
string(REGEX REPLACE "^#define EG_ABI_VERSION ([0-9]+).*" "\\1" exitguard_ABI_VERSION "${_exitguard_abi}")
unset(_exitguard_abi)

if(NOT TARGET exitguard::exitguard)
  add_library(exitguard::exitguard INTERFACE IMPORTED)
  set_target_properties(exitguard::exitguard PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${exitguard_INCLUDE_DIR}")
endif()

if(NOT exitguard_FIND_QUIETLY)
  message(STATUS "Found exitguard ${exitguard_VERSION} (ABI ${exitguard_ABI_VERSION}): ${exitguard_INCLUDE_DIR}")
endif()
