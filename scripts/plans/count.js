// An independent task: counts words, touches no other task.
function main(args) {
  return args.text.split(/\s+/).length;
}
