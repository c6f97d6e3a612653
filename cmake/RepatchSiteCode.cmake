# repatch_site_code(<target>)
#
# Marks <target> as code that contains repatch sites. A site may be a CALL, which pushes a return
# address below the stack pointer from inside inline assembly; the compiler does not know about
# that push, so a leaf function's red zone (the 128 bytes below %rsp that leaf functions use
# without moving %rsp) would be overwritten. Such code must be built without a red zone.
function(repatch_site_code target)
  target_compile_options(${target} PRIVATE -mno-red-zone)
endfunction()
