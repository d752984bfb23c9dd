# The project's warning policy: -Wall -Wextra clean, warnings are errors in our code.
function(moe_target_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Werror)
endfunction()
