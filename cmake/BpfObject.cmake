# bpf_object(NAME SOURCES <files> [HEADERS <files>])
#
# Compiles each BPF source with clang -target bpf against the pinned
# vmlinux.h (never the build host's BTF), links them into one object with
# `bpftool gen object` so the maps are shared by construction, generates the
# libbpf skeleton and exports an INTERFACE target NAME_skel that carries the
# skeleton's include directory and libbpf.
find_program(BPF_CLANG NAMES clang clang-16 clang-15 clang-14 REQUIRED)
find_program(BPFTOOL NAMES bpftool PATHS /usr/sbin /usr/local/sbin REQUIRED)

if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|amd64")
  set(BPF_ARCH x86)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64")
  set(BPF_ARCH arm64)
else()
  message(FATAL_ERROR "no pinned vmlinux.h for ${CMAKE_SYSTEM_PROCESSOR}")
endif()
# Relative to this file, not CMAKE_SOURCE_DIR: tests/fuzz (a project of its own) uses it too.
get_filename_component(BPF_VMLINUX_DIR ${CMAKE_CURRENT_LIST_DIR}/../vmlinux/${BPF_ARCH} ABSOLUTE)

function(bpf_object name)
  cmake_parse_arguments(ARG "" "" "SOURCES;HEADERS" ${ARGN})
  set(outdir ${CMAKE_CURRENT_BINARY_DIR}/${name})
  file(MAKE_DIRECTORY ${outdir})
  set(objects)
  foreach(src IN LISTS ARG_SOURCES)
    get_filename_component(base ${src} NAME_WE)
    get_filename_component(abs ${src} ABSOLUTE)
    set(obj ${outdir}/${base}.o)
    add_custom_command(
      OUTPUT ${obj}
      COMMAND ${BPF_CLANG} -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_${BPF_ARCH}
              -I${BPF_VMLINUX_DIR} -I${CMAKE_CURRENT_SOURCE_DIR} -c ${abs} -o ${obj}
      DEPENDS ${abs} ${ARG_HEADERS} ${BPF_VMLINUX_DIR}/vmlinux.h
      COMMENT "BPF ${base}.bpf.c"
      VERBATIM)
    list(APPEND objects ${obj})
  endforeach()
  set(linked ${outdir}/${name}.bpf.o)
  set(skel ${outdir}/${name}.skel.h)
  add_custom_command(
    OUTPUT ${linked} ${skel}
    COMMAND ${BPFTOOL} gen object ${linked} ${objects}
    COMMAND ${BPFTOOL} gen skeleton ${linked} name ${name} > ${skel}
    DEPENDS ${objects}
    COMMENT "BPF link + skeleton ${name}"
    VERBATIM)
  add_custom_target(${name}_skel_gen DEPENDS ${skel})
  add_library(${name}_skel INTERFACE)
  add_dependencies(${name}_skel ${name}_skel_gen)
  target_include_directories(${name}_skel INTERFACE ${outdir})
  target_link_libraries(${name}_skel INTERFACE PkgConfig::LIBBPF)
  set(${name}_BPF_OBJECT ${linked} PARENT_SCOPE)
endfunction()
