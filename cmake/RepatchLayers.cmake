# The layers of the source tree, enforced by the build.
#
# The folders form layers, lowest first: base, arch (arch/x86), sync, engine, trigger, then guest,
# stress and tools. Code may include its own layer's headers and those of the layers below, never
# those above. The build enforces that through the include path: no target has the repository
# root on it (tests and benchmarks excepted: they stand above every layer). Instead each layer has
# an include root in the build tree, holding links to its own folders and to the public headers
# (include/repatch/) that it implements, and a target of a layer sees only its own root and those
# of the layers it depends on. A lower layer's `#include "engine/..."` therefore fails to compile:
# the header is not on its path. tests/layers checks that it does. A lower layer's internal
# headers are visible too, not only the public ones: the stress harness is a white-box checker
# (stress/watchdog.cpp names the code a stuck vCPU is in with engine/symbolizer.h), which the order
# allows since the engine lies below it.
#
# repatch_layer(<name> FOLDERS <folder>... [PUBLIC_HEADERS <header>...] [DEPENDS <layer>...])
#
# Defines repatch_layer_<name>, an interface target with the layer's include root and its
# dependencies on lower layers' roots. Every target of the layer links it. FOLDERS are relative to
# the repository root (arch/x86), PUBLIC_HEADERS to include/repatch/ (error.h). A layer lists only
# the layers directly below it that it uses; the layers they depend on come with them.
function(repatch_layer name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "" "FOLDERS;PUBLIC_HEADERS;DEPENDS")
  set(root ${PROJECT_BINARY_DIR}/layers/${name})
  file(REMOVE_RECURSE ${root})
  foreach(folder IN LISTS arg_FOLDERS)
    get_filename_component(parent ${root}/${folder} DIRECTORY)
    file(MAKE_DIRECTORY ${parent})
    file(CREATE_LINK ${PROJECT_SOURCE_DIR}/${folder} ${root}/${folder} SYMBOLIC)
  endforeach()
  if(arg_PUBLIC_HEADERS)
    file(MAKE_DIRECTORY ${root}/repatch)
    foreach(header IN LISTS arg_PUBLIC_HEADERS)
      file(CREATE_LINK ${PROJECT_SOURCE_DIR}/include/repatch/${header} ${root}/repatch/${header}
           SYMBOLIC)
    endforeach()
  endif()
  add_library(repatch_layer_${name} INTERFACE)
  target_include_directories(repatch_layer_${name} INTERFACE $<BUILD_INTERFACE:${root}>)
  foreach(lower IN LISTS arg_DEPENDS)
    target_link_libraries(repatch_layer_${name} INTERFACE repatch_layer_${lower})
  endforeach()
endfunction()

# The object library itself, shared by the two functions below.
function(repatch_objects_of_layer target layer)
  add_library(${target} OBJECT ${ARGN})
  target_compile_options(${target} PRIVATE ${REPATCH_WARNINGS})
  target_link_libraries(${target} PUBLIC repatch_layer_${layer})
  repatch_site_code(${target})
endfunction()

# repatch_layer_objects(<target> <layer> <source>...)
#
# An object library of layer <layer>: the warnings, no red zone (the library's code holds sites
# and the thunks they call) and the layer's include path. Its sources are built once, so none may
# read the test hooks (see repatch_hooked_objects); configuring fails if one includes them.
function(repatch_layer_objects target layer)
  foreach(source IN LISTS ARGN)
    get_filename_component(path ${source} ABSOLUTE BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
    file(STRINGS ${path} hooks REGEX "^#include \"base/test_hooks\\.h\"")
    if(hooks)
      message(FATAL_ERROR "${source} includes base/test_hooks.h: list it with "
                          "repatch_hooked_objects, so that it is built with and without the hooks")
    endif()
  endforeach()
  repatch_objects_of_layer(${target} ${layer} ${ARGN})
endfunction()

# repatch_hooked_objects(<target> <layer> <source>...)
#
# Sources that read the test hooks (base/test_hooks.h), built twice: <target> without them (for
# the installed library and command) and <target>_hooked with REPATCH_TEST_HOOKS (for the tests and
# the stress CI scenarios). Only these sources are built twice; every source that includes
# base/test_hooks.h must be in one such list, or it would see the hooks off in a hooked program
# (repatch_layer_objects refuses it).
function(repatch_hooked_objects target layer)
  repatch_objects_of_layer(${target} ${layer} ${ARGN})
  repatch_objects_of_layer(${target}_hooked ${layer} ${ARGN})
  target_compile_definitions(${target}_hooked PRIVATE REPATCH_TEST_HOOKS)
  if(NOT REPATCH_TEST_HOOKS)
    set_target_properties(${target}_hooked PROPERTIES EXCLUDE_FROM_ALL ON)
  endif()
endfunction()
